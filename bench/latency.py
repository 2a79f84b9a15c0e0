"""Submit -> Running and submit -> Succeeded latency of a trivial job on an idle local stack.

    python -m bench.latency [--jobs 30] [--warmup 1] [--gap 0.2] [--out result.json]

Starts the whole stack (``trainmaster.supervisor.Stack``: nats-server, job-intake, validator,
scheduler, notifier and one executor agent, each its own process) in a temporary directory on a
free port, waits until the agent has registered, then submits trivial jobs *one at a time* (the
next one only after the previous one ended and ``--gap`` passed, so the stack is idle at every
submission).  A job is a boot file that prints one line and exits 0, with a one-file data folder.

Each job is published to ``tm.jobs.submit`` (JetStream, ``Nats-Msg-Id`` = the request id); the
clock starts right before the publish call.  The benchmark listens on ``tm.events.job.*`` and
``tm.events.request.*`` with plain core-NATS subscriptions opened before the first publish, so
every CloudEvent is timed at the moment it reaches the client.  Latencies are reported two ways:

* ``arrival``: when the event reached the benchmark (what a subscriber sees);
* ``event time``: the CloudEvent's own ``time`` field (when the service decided the transition),
  minus the wall-clock time of the publish (same host, same clock).

The first ``--warmup`` jobs are run the same way but left out of the statistics (they are in the
JSON result).  Exit status 1 if a job did not succeed or a process was left running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from bench._common import (
    CpuWatch,
    cancel_on_signals,
    machine,
    print_table,
    report_leftovers,
    summarize,
    trivial_job,
    trivial_job_files,
    write_result,
)
from trainmaster.client import TERMINAL, Client
from trainmaster.settings import Settings
from trainmaster.supervisor import AgentConf, Stack
from trainmaster.topology import Topology

# statuses in the order a successful job passes them
STAGES = ("Initializing", "Pending", "Scheduled", "Running", "Succeeded")


@dataclass
class Arrival:
    status: str
    type: str
    arrived: float  # perf_counter when the benchmark received it
    event_time: float  # the CloudEvent's ``time`` field, as a Unix timestamp


@dataclass
class JobSample:
    request_id: str
    job_id: str = ""
    status: str = ""
    reason: str | None = None
    # seconds since the publish call began, per measure
    pub_ack: float = 0.0
    accepted: float = 0.0
    arrival: dict[str, float] = field(default_factory=dict)
    event_time: dict[str, float] = field(default_factory=dict)


class Recorder:
    """Times every job and request event as it arrives (core-NATS callbacks)."""

    def __init__(self) -> None:
        self.job_events: dict[str, list[Arrival]] = defaultdict(list)
        self.ended: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.accepted: dict[str, tuple[float, dict[str, Any]]] = {}
        self.request_seen: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def on_job_event(self, msg: Msg) -> None:
        now = time.perf_counter()
        event = json.loads(msg.data)
        data = event["data"]
        self.job_events[data["job_id"]].append(
            Arrival(data["status"], event["type"], now, datetime.fromisoformat(event["time"]).timestamp()))
        if data["status"] in TERMINAL:
            self.ended[data["job_id"]].set()

    async def on_request_event(self, msg: Msg) -> None:
        now = time.perf_counter()
        event = json.loads(msg.data)
        request_id = event["data"]["request_id"]
        self.accepted.setdefault(request_id, (now, event))
        self.request_seen[request_id].set()


async def wait_for_agent(client: Client, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            agents = await client.agents()
            if agents:
                return agents
        except Exception:  # the scheduler is still starting: no responder yet
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no executor agent registered within {timeout_s:.0f} s")


async def run_one(client: Client, topo: Topology, rec: Recorder, spec: dict[str, Any], request_id: str,
                  timeout_s: float) -> JobSample:
    assert client.nc is not None
    js = client.nc.jetstream()
    body = json.dumps(spec).encode()
    sample = JobSample(request_id)
    wall0 = time.time()
    t0 = time.perf_counter()
    await js.publish(topo.jobs_submit, body, headers={"Nats-Msg-Id": request_id}, timeout=10)
    sample.pub_ack = time.perf_counter() - t0
    await asyncio.wait_for(rec.request_seen[request_id].wait(), timeout_s)
    arrived, event = rec.accepted[request_id]
    sample.accepted = arrived - t0
    if event["type"] != "tm.request.accepted":
        sample.status = "Rejected"
        sample.reason = json.dumps(event["data"].get("error"))
        return sample
    sample.job_id = event["data"]["job"]["id"]
    await asyncio.wait_for(rec.ended[sample.job_id].wait(), timeout_s)
    for arrival in rec.job_events[sample.job_id]:
        # the first event of each status counts (a redelivered report is published once)
        sample.arrival.setdefault(arrival.status, arrival.arrived - t0)
        sample.event_time.setdefault(arrival.status, arrival.event_time - wall0)
        sample.status = arrival.status
    if sample.status != "Succeeded":
        job = await client.get(sample.job_id)
        sample.reason = job.get("failure_reason")
    return sample


def stage_rows(samples: list[JobSample]) -> list[tuple[str, dict[str, float]]]:
    """Where the time goes: each step's own duration (by arrival)."""
    rows = [("publish -> PubAck", summarize([s.pub_ack for s in samples]))]
    previous = "publish"
    for stage in STAGES:
        def step(s: JobSample, stage: str = stage, previous: str = previous) -> float:
            start = 0.0 if previous == "publish" else s.arrival[previous]
            return s.arrival[stage] - start
        rows.append((f"{previous} -> {stage}", summarize([step(s) for s in samples])))
        previous = stage
    rows.append(("publish -> request accepted event", summarize([s.accepted for s in samples])))
    return rows


async def drive(url: str, settings: Settings, root: Path, args: argparse.Namespace,
                pids: list[int]) -> dict[str, Any]:
    topo = Topology(prefix=settings.bus.subject_prefix)
    code, data = trivial_job_files(root / "job")
    run_token = secrets.token_hex(4)
    rec = Recorder()
    async with Client(url, prefix=settings.bus.subject_prefix, timeout=30, creds=settings.bus.nats_creds) as client:
        assert client.nc is not None
        t_wait = time.perf_counter()
        agents = await wait_for_agent(client)
        print(f"agent {agents[0]['agent_id']} registered {time.perf_counter() - t_wait:.2f} s after the "
              "stack started", file=sys.stderr)
        await client.nc.subscribe(topo.job_events("*"), cb=rec.on_job_event)
        await client.nc.subscribe(topo.request_events("*"), cb=rec.on_request_event)
        await client.nc.flush()
        samples: list[JobSample] = []
        watch = CpuWatch(pids)
        for i in range(args.warmup + args.jobs):
            spec = trivial_job(f"bench-latency-{run_token}", code, data, root / "outputs" / f"job{i:04d}",
                               root / "job-logs")
            sample = await run_one(client, topo, rec, spec, f"bench-latency-{run_token}-{i:04d}", args.timeout)
            samples.append(sample)
            tag = "warm-up" if i < args.warmup else f"{i - args.warmup + 1}/{args.jobs}"
            running = sample.arrival.get("Running", float("nan"))
            done = sample.arrival.get(sample.status, float("nan"))
            print(f"  job {tag:>7}: {sample.status:<9} running after {running * 1000:7.1f} ms, "
                  f"{sample.status.lower()} after {done * 1000:7.1f} ms", file=sys.stderr)
            if sample.status != "Succeeded":
                print(f"    {sample.job_id or sample.request_id}: {sample.reason}", file=sys.stderr)
            await asyncio.sleep(args.gap)
        cpu = watch.stop()
    warm, measured = samples[: args.warmup], samples[args.warmup:]
    ok = [s for s in measured if s.status == "Succeeded"]
    summary = {
        "submit_to_running_arrival": summarize([s.arrival["Running"] for s in ok]),
        "submit_to_succeeded_arrival": summarize([s.arrival["Succeeded"] for s in ok]),
        "submit_to_running_event_time": summarize([s.event_time["Running"] for s in ok]),
        "submit_to_succeeded_event_time": summarize([s.event_time["Succeeded"] for s in ok]),
    }
    return {
        "ok": len(ok),
        "failed": len(measured) - len(ok),
        "summary": summary,
        "stages": dict(stage_rows(ok)) if ok else {},
        "cpu": cpu,
        "jobs": [asdict(s) for s in measured],
        "warmup_jobs": [asdict(s) for s in warm],
    }


async def main_async(args: argparse.Namespace) -> int:
    cancel_on_signals()
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="tm-bench-latency-"))
    os.chmod(root, 0o711)  # the agent's job user crosses it to the jobs' files
    settings = Settings(data_dir=root / "stack", nats_port=-1)
    stack = Stack(settings, [AgentConf("bench-1")], echo=lambda line: print(line, file=sys.stderr))
    pids: list[int] = []
    result: dict[str, Any] = {}
    error: BaseException | None = None
    try:
        url = await stack.start()
        pids = [p.pid for p in [stack.nats.proc, *(c.proc for c in stack.children)] if p is not None]
        print(f"stack up at {url}, data in {root}", file=sys.stderr)
        as_admin = Settings(bus=settings.bus, embedded=settings.embedded, nats_creds=stack.auth.admin_creds)
        result = await drive(url, as_admin, root, args, pids)
    except (Exception, asyncio.CancelledError) as exc:
        error = exc
    finally:
        await asyncio.to_thread(stack.stop)
        clean = report_leftovers(root, pids)
        if args.keep or (error is not None and not isinstance(error, asyncio.CancelledError)):
            print(f"kept {root} (service logs in {root / 'stack' / 'logs'})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if error is not None:
        why = "interrupted" if isinstance(error, asyncio.CancelledError) else f"{type(error).__name__}: {error}"
        print(f"benchmark failed: {why}", file=sys.stderr)
        return 1

    print(f"\nlatency of a trivial job via tm.jobs.submit, {args.jobs} jobs one at a time "
          f"(+{args.warmup} warm-up), {info['nproc']} CPUs, {info['date_utc']}")
    cpu = result["cpu"]
    print(f"succeeded {result['ok']}/{args.jobs}; during the run the stack used {cpu['ours_cpu_s']:.1f} CPU-s, "
          f"other processes on the machine {cpu['others_cpu_s']:.1f} CPU-s "
          f"({cpu['others_share_of_machine']:.0%} of it)\n")
    summary = result["summary"]
    print_table([
        ("submit -> Running (arrival)", summary["submit_to_running_arrival"]),
        ("submit -> Succeeded (arrival)", summary["submit_to_succeeded_arrival"]),
        ("submit -> Running (event time)", summary["submit_to_running_event_time"]),
        ("submit -> Succeeded (event time)", summary["submit_to_succeeded_event_time"]),
    ])
    if result["stages"]:
        print("\nwhere the time goes (each step on its own, by arrival):")
        print_table(result["stages"].items())
    write_result(args.out, {
        "benchmark": "latency",
        "command": "python -m bench." + Path(__file__).stem + " " + " ".join(sys.argv[1:]),
        "via": "tm.jobs.submit",
        "params": {"jobs": args.jobs, "warmup": args.warmup, "gap_s": args.gap},
        "machine": {**info, "load_avg_1m_at_end": os.getloadavg()[0]},
        "leftover_processes": not clean,
        **result,
    })
    return 0 if clean and result["failed"] == 0 else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30, help="jobs measured (default 30)")
    parser.add_argument("--warmup", type=int, default=1, help="jobs run first and not counted (default 1)")
    parser.add_argument("--gap", type=float, default=0.2, help="idle seconds between jobs (default 0.2)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one job may take (default 60)")
    parser.add_argument("--out", help="write the result as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (service logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
