"""The short part of ``make chaos``: tens of short jobs (some of them 3-node) through the whole
stack while three of the cheapest faults hit it one after the other (SIGKILL of the scheduler
leader, of an agent with running nodes, of job-intake); every invariant must hold.  The harness
manages its own processes (``chaos.procs``) and tears every one of them down."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from chaos import scenario
from chaos.faults import QUICK
from chaos.load import Mix
from chaos.table import format_findings, format_table

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


async def test_invariants_hold_under_the_cheapest_faults(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1_000_000))
    print(f"chaos seed {seed} (CHAOS_SEED={seed} to rerun)")
    plan = scenario.Plan(QUICK, jobs=24, interval_s=0.4, seed=seed, drain_s=60, notify_s=30,
                         mix=Mix(short=0.85, long=0.0, multi=0.15))
    row = await scenario.run(plan, tmp_path)
    report = f"seed {seed}\n{format_table([row])}\n{format_findings([row], per_row=20)}\n{row.notes}"
    print(report)
    assert row.error is None, report
    assert row.jobs >= 20, report  # the load really ran
    assert row.verdict == "ok", report
