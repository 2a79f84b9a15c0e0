"""``python -m chaos``: run fault scenarios, print the table (and optionally write it as JSON or
into a Markdown file).  Exit status 1 when any invariant failed or a scenario broke."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench._common import machine
from chaos import scenario
from chaos.faults import FAULTS
from chaos.table import Row, format_findings, format_table


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    p.add_argument("--faults", default="all", help=f"comma separated, or 'all': {', '.join(FAULTS)}")
    p.add_argument("--together", action="store_true",
                   help="inject the faults one after the other on one stack (one row) instead of one stack each")
    p.add_argument("--jobs", type=int, default=40, help="jobs per scenario")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between two submissions")
    p.add_argument("--seed", type=int, default=None, help="the RNG seed (printed; default: random)")
    p.add_argument("--root", default=None, help="folder for the scenarios' stacks (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep each scenario's folder (logs) afterwards")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


async def main(args: argparse.Namespace) -> list[Row]:
    names = list(FAULTS) if args.faults == "all" else [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise SystemExit(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    groups = [tuple(names)] if args.together else [(n,) for n in names]
    base = Path(args.root or tempfile.mkdtemp(prefix="tm-chaos-"))
    os.chmod(base, 0o711)  # the agents' job user crosses it to the jobs' files
    rows = []
    for group in groups:
        t0 = time.monotonic()
        print(f"--- {'+'.join(group)} ...", file=sys.stderr, flush=True)
        plan = scenario.Plan(group, jobs=args.jobs, interval_s=args.interval, seed=args.seed, keep=args.keep)
        row = await scenario.run(plan, base)
        print(f"    {row.verdict} in {time.monotonic() - t0:.0f}s: {row.target or row.error}", file=sys.stderr,
              flush=True)
        rows.append(row)
    return rows


def cli(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    print(f"chaos seed {args.seed} (rerun with --seed {args.seed})", flush=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    rows = asyncio.run(main(args))
    print(format_table(rows))
    details = format_findings(rows)
    if details:
        print("\nfindings (first of each row):\n" + details)
    for row in rows:
        for note in row.notes:
            print(f"note: {row.fault}: {note}")
    if args.json:
        out = {"seed": args.seed, "started": started, "argv": sys.argv, "machine": machine(),
               "rows": [dict(asdict(r), counts=dict(r.counts), verdict=r.verdict, lost=r.lost) for r in rows]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 1 if any(r.verdict != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(cli())
