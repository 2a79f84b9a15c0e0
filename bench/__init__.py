"""Benchmarks behind docs/benchmarks.md (``make bench``).

Each one starts its own processes in a temporary directory on free ports, measures, prints a
summary, optionally writes a JSON result (``--out``), stops everything it started and checks that
nothing is left running.  They are not tests: speed is never asserted here.
"""
