"""Fault injection for trainmaster: a steady load of real jobs, one fault at a time, and checks
that every invariant of the public contract still holds afterwards (see chaos/README.md)."""
