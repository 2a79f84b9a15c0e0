"""Placements per second, queued→placed latency, and a 64-node gang on a busy cluster.

    python -m bench.scheduler_throughput [--agents 1000] [--jobs 20000] [--rate 0] [--out result.json]
    python -m bench.scheduler_throughput --agents 10000 --jobs 100000 --queue-first --gang 256

Starts nats-server (JetStream in a temporary directory, free port), provisions the topology, and
starts two processes: **the scheduler** (one replica, as shipped; ``TM_AGENT_TIMEOUT_S=30``) and
**the simulated agents** (``bench.sim_agents``: ``--agents`` light agents in one process, 32 CPUs
and 256 GiB each, heartbeating, taking Assigns and reporting ``running`` at once).  A resource
catalog of its own adds pool ``bench`` (flavors ``small``: 1 CPU, 1 GiB; ``large``: 8 CPUs, 32 GiB).

How jobs are queued: the benchmark writes each job as the validator leaves it — a Pending record
created in the jobs KV bucket (``kv.create``, 512 in flight) plus its ``tm.work.schedule`` item
(``publish_async``) — so the figures are the scheduler's, not intake's (~830 jobs/s, see above) or
the validator's.  Each job's *queued* time is the time of its ``validated`` history entry (just
before the write); its *placed* time is the time of its ``placed`` entry (written by the
scheduler); both are read back from the bucket at the end.  Same machine, same clock.

1. **Throughput**: ``--jobs`` single-node ``small`` jobs of ``--accounts`` accounts, written as fast
   as the benchmark can (``--rate 0``) or at ``--rate`` jobs/s.  They all fit (1,000 x 32 CPUs) and
   run for an hour, so the cluster fills up.  Reported: placements/s (first queued to last placed,
   and the steady rate between 10 % and 90 % placed) and queued→placed p50/p99.  With
   ``--queue-first`` the jobs are all written *before the scheduler starts* (100,000 queued jobs,
   not a race between the benchmark's writes and the scheduler): placements/s then counts from
   the first placement to the last (and from the scheduler's start, load included), and the
   scheduler's memory (RSS, and its peak) is read from ``/proc``.
2. **A 64-node gang on a busy cluster**: with those jobs running, a burst of ``--backlog`` more small
   jobs of one account, and right after it a 64-node gang of ``large`` of another account.  Reported:
   the gang's queued→placed time, and where the backlog stood when the gang was placed.

The simulator checks that no agent is ever over-committed and no node assigned twice; the
benchmark that every job was placed (nothing lost) and placed once (one ``placed`` entry, attempt 1).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import yaml

from bench._common import (
    CpuWatch,
    cancel_on_signals,
    cpu_seconds,
    machine,
    percentile,
    report_leftovers,
    write_result,
)
from bench.sim_agents import STATS_SUBJECT
from trainmaster.bus import provision
from trainmaster.catalog import SHIPPED
from trainmaster.messages import JobRecord, JobRequest, Resources, Validated, WorkItem, encode
from trainmaster.natsd import NatsServer
from trainmaster.procs import child_preexec
from trainmaster.statemachine import new_record, transition
from trainmaster.topology import Topology

POOL = "bench"
FLAVORS = [{"name": "small", "cpus": 1, "memory_mb": 1024, "price_per_hour": 0.05},
           {"name": "large", "cpus": 8, "memory_mb": 32768, "price_per_hour": 0.40}]
_decode_record = msgspec.json.Decoder(JobRecord).decode


def write_catalog(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for shipped in SHIPPED.iterdir():
        if shipped.is_file():
            shutil.copy(shipped, folder / shipped.name)
    resources = yaml.safe_load((folder / "resources.yaml").read_text())
    resources["pools"].append({"name": POOL, "description": "benchmark pool", "flavors": FLAVORS})
    (folder / "resources.yaml").write_text(yaml.safe_dump(resources))
    return folder


class Submitter:
    """Writes Pending job records and their work items, many in flight."""

    def __init__(self, nc, topo: Topology) -> None:
        self.nc = nc
        self.js = nc.jetstream(publish_async_max_pending=20_000)
        self.topo = topo
        self.run = uuid.uuid4().hex[:6]
        self.count = 0

    async def open(self) -> None:
        self.kv = await self.js.key_value(self.topo.bucket_jobs.name)

    def record(self, account: str, node_count: int = 1, flavor: str = "small", run_s: float = 3600) -> JobRecord:
        self.count += 1
        job_id = f"job-b{self.run}{self.count:07d}"
        spec = JobRequest(name=f"bench-{account}", account=account, parameters={"run_s": run_s},
                          resources=Resources(pool=POOL, flavor=flavor, node_count=node_count))
        now = time.time()
        record = new_record(job_id=job_id, name=spec.name, version="V001", spec=spec, request_id=job_id, now=now)
        return transition(record, Validated("validated"), now)

    async def submit(self, jobs: list[Callable[[], JobRecord]], in_flight: int = 512) -> list[str]:
        """Write the jobs; each record is made (and so stamped with its queued time) right before
        its write."""
        gate = asyncio.Semaphore(in_flight)

        async def one(make: Callable[[], JobRecord]) -> str:
            async with gate:
                record = make()
                await self.kv.create(record.id, encode(record))
                await self.js.publish_async(self.topo.work_schedule, encode(WorkItem(record.id)),
                                            stream=self.topo.stream_work.name,
                                            headers={"Nats-Msg-Id": f"{record.id}.schedule"})
                return record.id

        return list(await asyncio.gather(*(one(make) for make in jobs)))

    async def paced(self, jobs: list[Callable[[], JobRecord]], rate: float) -> list[str]:
        tick = 0.05
        per_tick = max(int(rate * tick), 1)
        t0 = time.monotonic()
        ids: list[str] = []
        for i in range(0, len(jobs), per_tick):
            ids += await self.submit(jobs[i:i + per_tick])
            await asyncio.sleep(max(t0 + (i // per_tick + 1) * tick - time.monotonic(), 0))
        return ids


async def sim_stats(nc) -> dict[str, Any]:
    return json.loads((await nc.request(STATS_SUBJECT, b"", timeout=10)).data)


async def wait_assigns(nc, target: int, timeout_s: float, label: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last_print = 0.0
    while True:
        stats = await sim_stats(nc)
        if stats["assigns"] >= target:
            return stats
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label}: {stats['assigns']}/{target} nodes assigned after {timeout_s:.0f} s")
        if time.monotonic() - last_print > 5:
            print(f"  {label}: {stats['assigns']:>6}/{target} nodes assigned", file=sys.stderr)
            last_print = time.monotonic()
        await asyncio.sleep(0.25)


async def read_records(kv, ids: set[str]) -> dict[str, JobRecord]:
    out: dict[str, JobRecord] = {}
    watcher = await kv.watchall(include_history=False)
    async for entry in watcher:
        if entry is None:
            break
        if entry.key in ids and entry.value:
            out[entry.key] = _decode_record(entry.value)
    await watcher.stop()
    return out


def _placed_running(record: JobRecord) -> tuple[float, float | None]:
    placed = next(e.at for e in record.history if e.change == "placed")
    return placed, next((e.at for e in record.history if e.status.value == "Running"), None)


def timings(records: dict[str, JobRecord]) -> tuple[list[float], list[float]]:
    queued, placed = [], []
    for record in records.values():
        q = next(e.at for e in record.history if e.change == "validated")
        p = next((e.at for e in record.history if e.change == "placed"), None)
        if p is not None:
            queued.append(q)
            placed.append(p)
    return queued, placed


async def full_cluster_gang(nc, sub: Submitter, args: argparse.Namespace, before: dict[str, Any]) -> dict[str, Any]:
    """3. A 64-node gang on a *full* cluster: the free CPUs taken by long jobs (placed first), except a
    zone of ``--churn-cpus`` taken by short ones (5-20 s), and a stream of short jobs at ``--churn-rate``
    (more than the zone frees: a backlog builds) that keeps refilling what ends.  Without a
    reservation the gang would wait for ever (bin-packing refills the same agents); it waits until
    it has been blocked for ``TM_SCHEDULER_RESERVE_AFTER_S``, then for the agents held back to drain."""
    def churn() -> JobRecord:
        return sub.record("churn", run_s=random.uniform(5, 20))

    def long() -> JobRecord:
        return sub.record("long")

    free = int(before["cpus_total"] - before["cpus_used"])
    t0 = time.time()
    # the long jobs first, placed before any short one: queued together, fair share would mix them
    # on every agent, and then no agent could ever drain (the gang could not fit for an hour)
    longs = max(free - args.churn_cpus, 0)
    await sub.submit([long for _ in range(longs)])
    await wait_assigns(nc, before["assigns"] + longs, args.timeout, "phase 3 long fill")
    await sub.submit([churn for _ in range(min(args.churn_cpus, free))])
    stop = asyncio.Event()

    async def stream() -> None:
        tick, t_next = 0.1, time.monotonic()
        while not stop.is_set():
            await sub.submit([churn for _ in range(int(args.churn_rate * tick))])
            t_next += tick
            await asyncio.sleep(max(t_next - time.monotonic(), 0))

    streaming = asyncio.ensure_future(stream())
    try:
        deadline = time.monotonic() + 90
        while (stats := await sim_stats(nc))["cpus_used"] < stats["cpus_total"] - 8:
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not fill up")
            await asyncio.sleep(0.25)
        filled = time.time() - t0
        await asyncio.sleep(2)
        [gang_id] = await sub.submit([functools.partial(sub.record, "gang", node_count=args.gang, flavor="large")])
        deadline = time.monotonic() + args.timeout
        while True:
            record = _decode_record((await sub.kv.get(gang_id)).value)
            if any(e.change == "placed" for e in record.history):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the gang on the full cluster was not placed")
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await streaming
    q, p = timings({gang_id: record})
    print(f"phase 3: gang of {args.gang} on a full cluster placed {p[0] - q[0]:.1f} s after it was queued",
          file=sys.stderr)
    return {"nodes": args.gang, "churn_jobs_per_second": args.churn_rate, "churn_run_s": "5-20",
            "churn_cpus": args.churn_cpus,
            "seconds_to_fill": filled, "queued_to_placed_s": p[0] - q[0], "jobs_submitted": sub.count}


def scheduler_memory(pid: int) -> dict[str, float]:
    """The scheduler's resident memory now and at its peak (MiB), from ``/proc``."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out["rss_mib" if line.startswith("VmRSS") else "peak_rss_mib"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def placement_checks(records: dict[str, JobRecord], ids: set[str]) -> dict[str, int]:
    """Nothing lost (every job read back, and placed), nothing placed twice (one ``placed`` entry,
    attempt 1)."""
    return {
        "jobs_missing": len(ids - set(records)),
        "jobs_not_placed": sum(1 for r in records.values() if not any(e.change == "placed" for e in r.history)),
        "jobs_placed_twice": sum(1 for r in records.values()
                                 if sum(e.change == "placed" for e in r.history) > 1 or r.attempt > 1),
    }


async def drive(url: str, topo: Topology, args: argparse.Namespace, pids: dict[str, int],
                prewritten: tuple[list[str], float] | None = None, scheduler_started: float = 0.0) -> dict[str, Any]:
    nc = await nats.connect(url, pending_size=512 * 1024 * 1024)
    try:
        sub = Submitter(nc, topo)
        await sub.open()
        accounts = [f"acct-{i:02d}" for i in range(args.accounts)]
        # ---- 1. throughput
        watch = CpuWatch(pids.values())
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        if prewritten is not None:  # --queue-first: written before the scheduler started
            ids, t_written = prewritten
            t0 = t_written
        else:
            jobs = [functools.partial(sub.record, random.choice(accounts)) for _ in range(args.jobs)]
            t0 = time.time()
            ids = await (sub.paced(jobs, args.rate) if args.rate > 0 else sub.submit(jobs))
            t_written = time.time()
            print(f"phase 1: {args.jobs} jobs written in {t_written - t0:.2f} s", file=sys.stderr)
        stats = await wait_assigns(nc, args.jobs, args.timeout, "phase 1")
        wall = time.time() - t0
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        machine_cpu = watch.stop()
        memory = scheduler_memory(pids["scheduler"])
        got = await read_records(sub.kv, set(ids))
        queued, placed = timings(got)
        checks = placement_checks(got, set(ids))
        latencies = sorted(p - q for q, p in zip(queued, placed, strict=True))
        # the other half of the scheduler's work per job: applying the agent's "running" report
        reported = sorted(r - p for p, r in (_placed_running(rec) for rec in got.values()) if r is not None)
        not_yet = sum(1 for rec in got.values() if _placed_running(rec)[1] is None)
        order = sorted(placed)
        n = len(order)
        lo, hi = order[int(n * 0.1)], order[max(int(n * 0.9) - 1, 0)]
        first_placed = order[0]
        throughput = {
            "jobs": args.jobs, "placed": n, "seconds_to_write": t_written - t0, "queue_first": prewritten is not None,
            "placements_per_second_first_to_last_placed": n / (order[-1] - first_placed) if n > 1 else None,
            "seconds_scheduler_start_to_last_placed": order[-1] - scheduler_started,
            "scheduler_memory_after_phase_1": memory, "checks": checks,
            "seconds_first_queued_to_last_placed": order[-1] - min(queued),
            "placements_per_second": n / (order[-1] - min(queued)),
            "steady_placements_per_second_10_to_90": (int(n * 0.9) - 1 - int(n * 0.1)) / (hi - lo) if hi > lo else None,
            "queued_to_placed_s": {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90),
                                   "p99": percentile(latencies, 99), "max": latencies[-1]},
            "placed_to_running_applied_s": {"n": len(reported), "p50": percentile(reported, 50),
                                            "p99": percentile(reported, 99)},
            "running_reports_not_applied_when_last_placed": not_yet,
            "cpu_seconds": cpu, "cpu_share_of_one_core": {k: v / wall for k, v in cpu.items()},
            "machine_cpu": machine_cpu, "sim": stats,
        }
        print(f"phase 1: {n} placed, {throughput['placements_per_second']:,.0f}/s", file=sys.stderr)

        # ---- 2. a 64-node gang on a busy cluster, behind a burst of small jobs
        t_backlog = time.time()
        backlog = await sub.submit([functools.partial(sub.record, "flood") for _ in range(args.backlog)])
        [gang_id] = await sub.submit([functools.partial(sub.record, "gang", node_count=args.gang, flavor="large")])
        deadline = time.monotonic() + args.timeout
        while True:
            record = _decode_record((await sub.kv.get(gang_id)).value)
            if any(e.change == "placed" for e in record.history):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the gang was not placed")
            await asyncio.sleep(0.02)
        q, p = timings({gang_id: record})
        final = await wait_assigns(nc, args.jobs + args.backlog + args.gang, args.timeout, "phase 2")
        _, backlog_placed = timings(await read_records(sub.kv, set(backlog)))
        gang_result = {
            "nodes": args.gang, "flavor": "large (8 CPUs, 32 GiB)", "backlog_jobs": args.backlog,
            "queued_to_placed_s": p[0] - q[0], "backlog_written_s_before_gang": q[0] - t_backlog,
            "backlog_placed_before_gang": sum(1 for t in backlog_placed if t < p[0]),
            "backlog_all_placed_s": max(backlog_placed) - t_backlog,
            "agents": len({pl.agent_id for pl in record.placements}),
        }
        print(f"phase 2: gang of {args.gang} placed {gang_result['queued_to_placed_s'] * 1000:.0f} ms after it "
              f"was queued", file=sys.stderr)
        full = await full_cluster_gang(nc, sub, args, final) if args.churn_rate > 0 else None
        final = await sim_stats(nc)
        return {"throughput": throughput, "gang": gang_result, "full_cluster_gang": full, "sim_final": final,
                "scheduler_memory_at_end": scheduler_memory(pids["scheduler"])}
    finally:
        await nc.close()


async def write_first(url: str, topo: Topology, args: argparse.Namespace) -> tuple[list[str], float]:
    """--queue-first: every job written before the scheduler starts; the ids and when it ended."""
    nc = await nats.connect(url, pending_size=512 * 1024 * 1024)
    try:
        sub = Submitter(nc, topo)
        await sub.open()
        accounts = [f"acct-{i:02d}" for i in range(args.accounts)]
        t0 = time.time()
        ids = await sub.submit([functools.partial(sub.record, random.choice(accounts)) for _ in range(args.jobs)])
        await sub.js.publish_async_completed()
        print(f"phase 1: {len(ids)} jobs queued in {time.time() - t0:.1f} s before the scheduler starts",
              file=sys.stderr)
        return ids, time.time()
    finally:
        await nc.close()


async def wait_agents(url: str, topo: Topology, count: int, timeout_s: float = 60) -> None:
    nc = await nats.connect(url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                reply = json.loads((await nc.request(topo.agents_list, b"{}", timeout=2)).data)
                if len(reply.get("agents", [])) >= count:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the scheduler did not list {count} agents within {timeout_s:.0f} s")
    finally:
        await nc.close()


async def main_async(args: argparse.Namespace) -> int:
    cancel_on_signals()
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="tm-bench-sched-"))
    data_dir = root / "stack"
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    topo = Topology()
    server = NatsServer(store_dir=data_dir / "nats", port=-1, log_file=data_dir / "logs" / "nats-server.log")
    children: dict[str, subprocess.Popen] = {}
    result: dict[str, Any] = {}
    error: BaseException | None = None
    try:
        url = await asyncio.to_thread(server.start)
        nc = await nats.connect(url)
        await provision(nc.jetstream(), topo)
        await nc.close()
        catalog = write_catalog(root / "catalog")
        env = dict(os.environ, TM_NATS_URL=url, TM_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1",
                   TM_CATALOG_DIR=str(catalog), TM_AGENT_TIMEOUT_S="30")
        children["sim-agents"] = spawn(["bench.sim_agents", "--nats", url, "--agents", str(args.agents),
                                        "--pool", POOL, "--catalog", str(catalog), "--heartbeat-s",
                                        str(args.heartbeat_s)], env, data_dir / "logs")
        prewritten = await write_first(url, topo, args) if args.queue_first else None
        scheduler_started = time.time()
        profile = ["cProfile", "-o", str(root / "scheduler.prof")] if args.profile else []
        children["scheduler"] = spawn([*profile, "-m", "services.scheduler"] if profile else ["services.scheduler"],
                                      env, data_dir / "logs")
        if not args.queue_first:  # with a queue, placing it is the sign (the list may wait behind it)
            await wait_agents(url, topo, args.agents)
        print(f"nats-server at {url}, scheduler and {args.agents} simulated agents up; data in {root}",
              file=sys.stderr)
        assert server.proc is not None
        pids = {name: proc.pid for name, proc in children.items()} | {"nats-server": server.proc.pid}
        result = await drive(url, topo, args, pids, prewritten, scheduler_started)
    except (Exception, asyncio.CancelledError) as exc:
        error = exc
    finally:
        pids_all = [p.pid for p in (server.proc, *children.values()) if p is not None]
        for proc in children.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 20)
                except Exception:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
        await asyncio.to_thread(server.stop)
        clean = report_leftovers(root, pids_all)
        if args.keep or (error is not None and not isinstance(error, asyncio.CancelledError)):
            print(f"kept {root} (logs in {data_dir / 'logs'})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if error is not None:
        why = "interrupted" if isinstance(error, asyncio.CancelledError) else f"{type(error).__name__}: {error}"
        print(f"benchmark failed: {why}", file=sys.stderr)
        return 1
    report(args, info, result)
    write_result(args.out, {
        "benchmark": "scheduler_throughput",
        "command": "python -m bench." + Path(__file__).stem + " " + " ".join(sys.argv[1:]),
        "params": vars(args), "machine": {**info, "load_avg_1m_at_end": os.getloadavg()[0]},
        "leftover_processes": not clean, **result,
    })
    sim = result["sim_final"]
    checks = result["throughput"]["checks"]
    ok = sim["overcommits"] == 0 and sim["duplicate_assigns"] == 0 and clean and not any(checks.values())
    return 0 if ok else 1


def spawn(module_and_args: list[str], env: dict[str, str], log_dir: Path) -> subprocess.Popen:
    """``python -m <module> <args>`` with its output in ``<log_dir>/<module>.log``."""
    name = next(a for a in module_and_args if a.startswith(("services.", "bench."))).rsplit(".", 1)[-1]
    with (log_dir / f"{name}.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", *module_and_args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=child_preexec,
                                start_new_session=True)


def report(args: argparse.Namespace, info: dict[str, Any], result: dict[str, Any]) -> None:
    t, g, sim = result["throughput"], result["gang"], result["sim_final"]
    lat = t["queued_to_placed_s"]
    mode = "as fast as written" if args.rate <= 0 else f"paced at {args.rate:,.0f}/s"
    print(f"\nscheduler: {args.jobs} single-node jobs ({mode}), {args.agents} simulated agents, one scheduler; "
          f"{info['nproc']} CPUs, {info['date_utc']}")
    print(f"  placements/s:        {t['placements_per_second']:>8,.0f}  (first queued to last placed"
          f"{', queued before the scheduler started' if t['queue_first'] else ''}: "
          f"{t['seconds_first_queued_to_last_placed']:.2f} s; jobs written in {t['seconds_to_write']:.2f} s)")
    print(f"  steady 10-90 %:      {t['steady_placements_per_second_10_to_90'] or float('nan'):>8,.0f} /s")
    if t["queue_first"]:
        print(f"  {args.jobs:,} queued before the scheduler started: first to last placed "
              f"{t['placements_per_second_first_to_last_placed'] or float('nan'):,.0f}/s; scheduler start to last "
              f"placed {t['seconds_scheduler_start_to_last_placed']:.1f} s (loading the queue included)")
    mem, end = t["scheduler_memory_after_phase_1"], result["scheduler_memory_at_end"]
    nan = float("nan")
    print(f"  scheduler memory:    RSS {mem.get('rss_mib', nan):,.0f} MiB after phase 1, "
          f"{end.get('rss_mib', nan):,.0f} MiB at the end (peak {end.get('peak_rss_mib', nan):,.0f} MiB)")
    print(f"  queued -> placed:    p50 {lat['p50'] * 1000:,.0f} ms, p90 {lat['p90'] * 1000:,.0f} ms, "
          f"p99 {lat['p99'] * 1000:,.0f} ms, max {lat['max'] * 1000:,.0f} ms")
    rep = t["placed_to_running_applied_s"]
    print(f"  placed -> 'running' report applied: p50 {rep['p50'] * 1000:,.0f} ms, p99 {rep['p99'] * 1000:,.0f} ms; "
          f"{t['running_reports_not_applied_when_last_placed']:,} not yet applied when the last job was placed")
    share = t["cpu_share_of_one_core"]
    print(f"  CPU (share of one core): scheduler {share['scheduler']:.0%}, nats-server {share['nats-server']:.0%}, "
          f"simulated agents {share['sim-agents']:.0%}; other processes "
          f"{t['machine_cpu']['others_share_of_machine']:.0%} of the machine")
    print(f"  gang of {g['nodes']} x {g['flavor']} behind {g['backlog_jobs']} queued small jobs: placed "
          f"{g['queued_to_placed_s'] * 1000:,.0f} ms after it was queued, on {g['agents']} agents "
          f"({g['backlog_placed_before_gang']} of the backlog placed before it; all of the backlog "
          f"{g['backlog_all_placed_s']:.1f} s after it was written)")
    if full := result.get("full_cluster_gang"):
        print(f"  gang of {full['nodes']} x large on a full cluster ({full['churn_jobs_per_second']:,.0f} short jobs/s "
              f"refilling {full['churn_cpus']:,} CPUs): placed {full['queued_to_placed_s']:.1f} s after it was queued "
              f"(agents held back after TM_SCHEDULER_RESERVE_AFTER_S, then drained)")
    checks = t["checks"]
    print(f"  correctness: {sim['assigns']} nodes assigned, agents over-committed {sim['overcommits']}, "
          f"nodes assigned twice {sim['duplicate_assigns']}, jobs placed twice {checks['jobs_placed_twice']}, "
          f"jobs lost {checks['jobs_missing']} / not placed {checks['jobs_not_placed']}, "
          f"report publish errors {sim['publish_errors']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents (default 1000)")
    parser.add_argument("--jobs", type=int, default=20_000, help="single-node jobs queued (default 20000)")
    parser.add_argument("--accounts", type=int, default=10, help="accounts the jobs belong to (default 10)")
    parser.add_argument("--rate", type=float, default=0.0, help="jobs written per second; 0 = as fast as possible")
    parser.add_argument("--backlog", type=int, default=5000, help="small jobs queued just before the gang")
    parser.add_argument("--gang", type=int, default=64, help="nodes of the gang (default 64)")
    parser.add_argument("--churn-rate", type=float, default=250.0,
                        help="short jobs/s keeping the cluster full for the last gang; 0 skips that phase")
    parser.add_argument("--churn-cpus", type=int, default=2048,
                        help="CPUs of the full cluster that run short jobs (the rest: long ones)")
    parser.add_argument("--queue-first", action="store_true",
                        help="write every job before the scheduler starts (a queue of --jobs), then place them")
    parser.add_argument("--heartbeat-s", type=float, default=2.0, help="heartbeat interval of each simulated agent")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each phase")
    parser.add_argument("--out", help="write the result as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--profile", action="store_true",
                        help="run the scheduler under cProfile (scheduler.prof in the kept directory; slower)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
