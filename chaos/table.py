"""The report: one row per fault scenario, as a Markdown table (printed, and kept in
docs/reliability.md), plus the first findings of each failed row."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from chaos import checks


@dataclass
class Row:
    fault: str
    target: str  # what exactly was hit, e.g. "scheduler (leader, pid 123)"
    jobs: int  # accepted jobs
    in_flight: int  # of them, not ended when the fault hit
    counts: Counter[str] = field(default_factory=Counter)  # findings per invariant
    recover_s: float | None = None
    settle_s: float | None = None
    failed_jobs: int = 0  # jobs that ended Failed (allowed, but worth seeing)
    error: str | None = None  # the scenario itself broke (the stack did not start, ...)
    findings: list[checks.Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.counts[checks.REQUEST_LOST] + self.counts[checks.NOT_TERMINAL]

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        return "FAIL" if checks.failed(self.findings) else "ok"


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def _other(counts: Counter[str]) -> str:
    shown = {checks.REQUEST_LOST, checks.NOT_TERMINAL, checks.EVENT_DUPLICATE, checks.CHARGE_DUPLICATE,
             checks.CONCURRENT_NODE}
    parts = [f"{name} {n}" for name, n in sorted(counts.items()) if name not in shown and n]
    return ", ".join(parts) or "-"


HEADER = ("| fault | target | jobs | in flight | lost | dup terminal events / charges / concurrent nodes "
          "| other findings | failed jobs | recover s | settle s | verdict |")


def format_table(rows: list[Row]) -> str:
    lines = [HEADER, "|" + " --- |" * (HEADER.count("|") - 1)]
    for r in rows:
        dups = f"{r.counts[checks.EVENT_DUPLICATE]} / {r.counts[checks.CHARGE_DUPLICATE]} / " \
               f"{r.counts[checks.CONCURRENT_NODE]}"
        other = f"scenario error: {r.error}" if r.error else _other(r.counts)
        lines.append(f"| {r.fault} | {r.target} | {r.jobs} | {r.in_flight} | {r.lost} | {dups} | {other} "
                     f"| {r.failed_jobs} | {_secs(r.recover_s)} | {_secs(r.settle_s)} | {r.verdict} |")
    return "\n".join(lines)


def format_findings(rows: list[Row], per_row: int = 5) -> str:
    """The first findings of each row, so a FAIL says what broke without digging."""
    out = []
    for r in rows:
        shown = r.findings[:per_row]
        if not shown:
            continue
        out.append(f"{r.fault}:")
        out += [f"  {f.invariant}: {f.subject}: {f.detail}" for f in shown]
        if len(r.findings) > per_row:
            out.append(f"  ... {len(r.findings) - per_row} more")
    return "\n".join(out)
