"""One scenario: a fresh stack, a steady load, the fault(s) at random moments (one at a time),
then the drain, the collection, the teardown and the checks.  Returns a table row."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench._common import leftover_processes
from chaos import checks, collect
from chaos.faults import FAULTS, Context
from chaos.load import Load, Mix, prepare
from chaos.model import Observation
from chaos.natsd import free_port
from chaos.stack import Stack
from chaos.table import Row
from chaos.webhook import Receiver
from trainmaster.topology import Topology


@dataclass
class Plan:
    faults: tuple[str, ...]  # injected one after the other on the same stack
    jobs: int = 40
    interval_s: float = 0.5
    seed: int = 0
    mix: Mix | None = None
    drain_s: float = 150.0  # after the load: how long every accepted job may take to end
    bill_s: float = 75.0  # then: how long the biller may take to settle every event (ack wait 30 s)
    notify_s: float = 45.0  # then: how long the last webhooks may take
    keep: bool = False  # keep the scenario's folder (logs) afterwards


async def _poll(nc, stack: Stack, load: Load, deadline: float) -> tuple[list, dict]:
    """Re-read the events until every acknowledged request has a job and every job ended."""
    events, requests = [], {}
    while True:
        with contextlib.suppress(Exception):
            events, requests = await collect.read_events(nc, stack.topo)
            subs = collect.resolve(load.acked, requests)
            jobs = {s.job_id for s in subs if s.job_id}
            pending_requests = [s for s in subs if s.job_id is None and s.rejected is None]
            if not pending_requests and collect.ended(events, jobs) == jobs:
                return events, requests
        if time.monotonic() > deadline:
            return events, requests
        await asyncio.sleep(2)


async def _wait_webhooks(receiver: Receiver, events: list, deadline: float) -> None:
    wanted = {e.id for e in events if e.type in checks.TERMINAL_TYPES}
    while time.monotonic() < deadline and not wanted <= {r.event_id for r in receiver.receipts}:  # noqa: ASYNC110
        await asyncio.sleep(0.5)


async def _wait_billed(nc, topo: Topology, deadline: float) -> None:
    """Until the biller has settled every event in the stream (a biller killed mid-charge gets its
    event again after the consumer's ack wait, 30 s): nothing pending, nothing unacknowledged."""
    spec = topo.consumer_billing
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            info = await nc.jetstream().consumer_info(spec.stream, spec.durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
        await asyncio.sleep(0.5)


def _mount_tmpfs(path: Path, mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)], check=True)


async def run(plan: Plan, base: Path) -> Row:
    rng = random.Random(f"{plan.seed}:{'+'.join(plan.faults)}")
    name = "+".join(plan.faults)
    root = base / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    specs = [FAULTS[f] for f in plan.faults]
    mount = None
    if any(s.tmpfs_mb for s in specs):
        mount = root / "store"
        _mount_tmpfs(mount, max(s.tmpfs_mb for s in specs))
    stack = Stack(root, nats_nodes=max(s.nats_nodes for s in specs), store_on=mount)
    receiver = Receiver(free_port())
    row = Row(name, "", 0, 0)
    obs = Observation()
    fault_times: list[float] = []
    nc = None
    try:
        await stack.start()
        await receiver.up()
        nc = await stack.connect()
        await collect.request(nc, stack.topo.topics("create"), {"name": stack.topic})
        await collect.request(nc, stack.topo.topics("subscribe"), {"topic": stack.topic, "protocol": "webhook",
                                                                  "endpoint": receiver.url})
        prepare(root)
        load = Load(nc, root, rng, stack.topic, plan.mix or Mix(), topo=stack.topo)
        load_task = asyncio.create_task(load.run(plan.jobs, plan.interval_s))
        ctx = Context(stack, nc, receiver, rng, mount)
        load_s = plan.jobs * plan.interval_s
        # random moments in the middle of the load, one fault after the other, in order
        slots = sorted(rng.uniform(0.25, 0.75) * load_s for _ in specs)
        started = time.monotonic()
        targets = []
        for spec, at in zip(specs, slots, strict=True):
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            fault_times.append(time.time())
            targets.append(await spec.inject(ctx))
        row.target = "; ".join(targets)
        await load_task
        events, requests = await _poll(nc, stack, load, time.monotonic() + plan.drain_s)
        await _wait_webhooks(receiver, events, time.monotonic() + plan.notify_s)
        events, requests = await collect.read_events(nc, stack.topo)
        obs.submissions = collect.resolve(load.acked, requests)
        obs.events = events
        job_ids = [s.job_id for s in obs.submissions if s.job_id]
        obs.records = await collect.read_records(nc, stack.topo, job_ids)
        await _wait_billed(nc, stack.topo, time.monotonic() + plan.bill_s)
        obs.charges = await collect.read_charges(nc, stack.topo)
        obs.receipts = list(receiver.receipts)
        obs.node_runs = collect.read_node_runs(root / "runs")
        obs.notes.append(f"seen: {len(obs.events)} job events, {len(obs.node_runs)} node runs, "
                         f"{len(obs.receipts)} webhook receipts, {sum(obs.charges.values())} charges")
        if load.unacked:
            obs.notes.append(f"{len(load.unacked)} submissions never acknowledged (not counted as accepted)")
    except Exception as exc:  # the scenario itself broke: reported as ERROR, not hidden
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        obs.notes.append(f"scenario error in full: {exc}")
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        await receiver.down()
        await stack.stop()
        obs.unexpected_exits = stack.fleet.unexpected_exits()
        obs.notes += [line for proc in stack.fleet.procs for line in proc.watchdog_restarts]
        await asyncio.sleep(0.5)
        obs.leftovers = leftover_processes(root)
        if mount is not None:
            await asyncio.to_thread(subprocess.run, ["umount", "-l", str(mount)], check=False)
        if not plan.keep and row.error is None:
            shutil.rmtree(root, ignore_errors=True)
    row.findings = checks.check_all(obs)
    row.findings += [checks.Finding(checks.UNEXPECTED_EXIT, line.split(" ", 1)[0], line)
                     for line in obs.unexpected_exits]
    row.counts = checks.count(row.findings)
    row.jobs = len(obs.accepted())
    row.in_flight = len(checks.in_flight(obs, fault_times[0])) if fault_times else 0
    row.recover_s = checks.recover_s(obs, fault_times[0]) if fault_times else None
    row.settle_s = checks.settle_s(obs, fault_times[0]) if fault_times else None
    row.failed_jobs = sum(1 for r in obs.records.values() if r.status == "Failed")
    row.notes = obs.notes
    return row
