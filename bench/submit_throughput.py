"""Jobs accepted per second on ``tm.jobs.submit``.

    python -m bench.submit_throughput [--requests 10000] [--names 100] [--out result.json]

Starts nats-server (JetStream in a temporary directory, free port), provisions the topology, and
starts only the job-intake service process: accepting a request is intake's work (decode,
normalise, idempotence claim, version counter, job record, ``tm.job.submitted`` event, hand-off
to the validator, ``tm.request.accepted`` event).  The validator, scheduler, notifier and agents
are *not* running, so every accepted job stays Initializing and its ``tm.work.validate`` item
waits in the WORK stream.

Then it publishes ``--requests`` distinct valid job requests to ``tm.jobs.submit``, pipelined
(nats-py ``publish_async``: up to 4,000 publishes in flight, each with its own ``Nats-Msg-Id``),
and counts the ``tm.request.accepted`` events on ``tm.events.request.*`` (a core-NATS
subscription opened before the first publish) until every request is accepted.

Reported: the publish rate alone (first publish to the last PubAck), the accept rate (first
publish to the last accepted event), the steady accept rate (between 10 % and 90 % accepted),
and a check of the jobs KV bucket (one record per request) and of the REQUESTS stream (drained).
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
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from bench._common import (
    CpuWatch,
    cancel_on_signals,
    cpu_seconds,
    machine,
    report_leftovers,
    trivial_job,
    trivial_job_files,
    write_result,
)
from trainmaster.bus import provision
from trainmaster.client import Client
from trainmaster.natsd import NatsServer
from trainmaster.settings import Settings
from trainmaster.supervisor import Child
from trainmaster.topology import Topology


class AcceptCounter:
    """Counts distinct request ids accepted (a core subscriber also sees duplicate publishes)."""

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.accepted: dict[str, float] = {}
        self.rejected: dict[str, str] = {}
        self.done = asyncio.Event()

    async def on_event(self, msg: Msg) -> None:
        now = time.perf_counter()
        event = json.loads(msg.data)
        request_id = event["data"]["request_id"]
        if request_id not in self.expected:
            return
        if event["type"] == "tm.request.accepted":
            self.accepted.setdefault(request_id, now)
        else:
            self.rejected.setdefault(request_id, json.dumps(event["data"].get("error")))
        if len(self.accepted) + len(self.rejected) >= len(self.expected):
            self.done.set()


async def wait_for_intake(url: str, prefix: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with Client(url, prefix=prefix, timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                await client.list(limit=1)
                return
            except Exception:  # no responder yet
                await asyncio.sleep(0.1)
    raise TimeoutError(f"job-intake did not answer tm.jobs.list within {timeout_s:.0f} s")


async def progress(counter: AcceptCounter, total: int, t0: float, every_s: float,
                   timeline: list[tuple[float, int]]) -> None:
    while not counter.done.is_set():
        await asyncio.sleep(every_s)
        n = len(counter.accepted)
        elapsed = time.perf_counter() - t0
        timeline.append((round(elapsed, 3), n))
        print(f"  {elapsed:7.1f} s: {n:>6}/{total} accepted", file=sys.stderr)


async def drive(url: str, settings: Settings, root: Path, args: argparse.Namespace,
                pids: dict[str, int]) -> dict[str, Any]:
    topo = Topology(prefix=settings.bus.subject_prefix)
    code, data = trivial_job_files(root / "job")
    run_token = secrets.token_hex(4)
    request_ids = [f"bench-tput-{run_token}-{i:06d}" for i in range(args.requests)]
    bodies = [
        json.dumps(trivial_job(f"bench-tput-{i % args.names:04d}", code, data, root / "outputs" / f"job{i:06d}",
                               root / "job-logs")).encode()
        for i in range(args.requests)
    ]
    counter = AcceptCounter(set(request_ids))
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    try:
        js = nc.jetstream(publish_async_max_pending=args.in_flight)
        await nc.subscribe(topo.request_events("*"), cb=counter.on_event,
                           pending_msgs_limit=4 * args.requests + 1000, pending_bytes_limit=1024**3)
        await nc.flush()

        timeline: list[tuple[float, int]] = []
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        watch = CpuWatch(pids.values())
        t0 = time.perf_counter()
        ticker = asyncio.ensure_future(progress(counter, args.requests, t0, args.progress, timeline))
        futures = [
            await js.publish_async(topo.jobs_submit, body, headers={"Nats-Msg-Id": rid})
            for rid, body in zip(request_ids, bodies, strict=True)
        ]
        t_sent = time.perf_counter()
        acks = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 120)
        t_acked = time.perf_counter()
        errors = [a for a in acks if isinstance(a, BaseException)]
        duplicates = sum(1 for a in acks if not isinstance(a, BaseException) and a.duplicate)
        print(f"published {args.requests} in {t_acked - t0:.2f} s ({args.requests / (t_acked - t0):,.0f}/s), "
              f"{len(errors)} errors, {duplicates} duplicates", file=sys.stderr)
        if errors:
            raise RuntimeError(f"{len(errors)} publishes failed, e.g. {errors[0]!r}")
        try:
            await asyncio.wait_for(counter.done.wait(), args.timeout)
        finally:
            ticker.cancel()
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        t_cpu = time.perf_counter()
        machine_cpu = watch.stop()
        times = sorted(counter.accepted.values())
        t_last = times[-1] if times else time.perf_counter()
        n = len(times)
        i_lo, i_hi = int(n * 0.1), max(int(n * 0.9) - 1, 0)
        span = times[i_hi] - times[i_lo] if n else 0.0
        steady = (i_hi - i_lo) / span if span > 0 else float("nan")

        # the truth behind the events: one job record per request (nothing updates a record while the
        # validator is absent, so the bucket's stream holds exactly one message per job), the
        # request stream drained
        kv_info = await js.stream_info(f"KV_{topo.bucket_jobs.name}")
        requests_info = await js.stream_info(topo.stream_requests.name)
        deadline = time.monotonic() + 10
        while requests_info.state.messages and time.monotonic() < deadline:  # last acks in flight
            await asyncio.sleep(0.2)
            requests_info = await js.stream_info(topo.stream_requests.name)
        work_info = await js.stream_info(topo.stream_work.name)
    finally:
        await nc.close()

    return {
        "requests": args.requests,
        "accepted": n,
        "rejected": len(counter.rejected),
        "rejections": list(counter.rejected.values())[:5],
        "publish": {
            "seconds_to_last_send": t_sent - t0,
            "seconds_to_last_puback": t_acked - t0,
            "per_second": args.requests / (t_acked - t0),
            "errors": len(errors),
            "duplicates": duplicates,
        },
        "accept": {
            "seconds_to_first": (times[0] - t0) if times else None,
            "seconds_to_last": t_last - t0,
            "per_second": n / (t_last - t0),
            "steady_per_second_10_to_90": steady,
        },
        # CPU seconds each process used from the first publish until every request was accepted,
        # and the share of one core that is (1.0 = one core busy all the time)
        "cpu_seconds": cpu,
        "cpu_share_of_one_core": {name: used / (t_cpu - t0) for name, used in cpu.items()},
        "machine_cpu": machine_cpu,
        "kv_jobs_records": kv_info.state.messages,
        "requests_stream_left": requests_info.state.messages,
        "work_items_waiting": work_info.state.messages,
        "timeline": timeline,
    }


async def main_async(args: argparse.Namespace) -> int:
    cancel_on_signals()
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="tm-bench-submit-"))
    settings = Settings(data_dir=root / "stack", nats_port=-1)
    data_dir = settings.embedded.data_dir.resolve()
    server = NatsServer(store_dir=data_dir / "nats", host=settings.embedded.nats_host, port=-1,
                        log_file=data_dir / "logs" / "nats-server.log")
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    intake: Child | None = None
    result: dict[str, Any] = {}
    error: BaseException | None = None
    try:
        url = await asyncio.to_thread(server.start)
        nc = await nats.connect(url)
        await provision(nc.jetstream(), Topology(settings.bus.subject_prefix, settings.bus.stream_replicas))
        await nc.close()
        env = dict(os.environ, TM_NATS_URL=url, TM_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
        intake = Child("job_intake", "services.job_intake", env, data_dir / "logs" / "job-intake.log")
        intake.start()
        await wait_for_intake(url, settings.bus.subject_prefix)
        print(f"nats-server at {url} and job-intake (pid {intake.proc.pid if intake.proc else '?'}) up; "
              f"data in {root}", file=sys.stderr)
        assert server.proc is not None and intake.proc is not None
        result = await drive(url, settings, root, args, {"job-intake": intake.proc.pid,
                                                          "nats-server": server.proc.pid})
    except (Exception, asyncio.CancelledError) as exc:
        error = exc
    finally:
        pids = [p.pid for p in (server.proc, intake.proc if intake else None) if p is not None]
        if intake is not None and intake.proc is not None and intake.proc.poll() is None:
            intake.proc.terminate()
            try:
                await asyncio.to_thread(intake.proc.wait, 20)
            except Exception:
                intake.proc.kill()
                await asyncio.to_thread(intake.proc.wait)
        await asyncio.to_thread(server.stop)
        clean = report_leftovers(root, pids)
        if args.keep or (error is not None and not isinstance(error, asyncio.CancelledError)):
            print(f"kept {root} (logs in {data_dir / 'logs'})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if error is not None:
        why = "interrupted" if isinstance(error, asyncio.CancelledError) else f"{type(error).__name__}: {error}"
        print(f"benchmark failed: {why}", file=sys.stderr)
        return 1

    pub, acc = result["publish"], result["accept"]
    print(f"\ntm.jobs.submit throughput, {args.requests} distinct valid requests ({args.names} job names), "
          f"pipelined ({args.in_flight} in flight); only nats-server + job-intake running; "
          f"{info['nproc']} CPUs, {info['date_utc']}")
    print(f"  publish alone:  {pub['per_second']:>9,.0f} requests/s  ({pub['seconds_to_last_puback']:.2f} s to "
          "the last PubAck)")
    print(f"  accepted:       {acc['per_second']:>9,.0f} jobs/s      ({acc['seconds_to_last']:.2f} s to the last "
          f"tm.request.accepted; first after {acc['seconds_to_first'] * 1000:.1f} ms)")
    print(f"  steady 10-90 %: {acc['steady_per_second_10_to_90']:>9,.0f} jobs/s")
    share = result["cpu_share_of_one_core"]
    print(f"  CPU while accepting: job-intake {share['job-intake']:.0%} of one core, "
          f"nats-server {share['nats-server']:.0%}; "
          f"{result['cpu_seconds']['job-intake'] / max(result['accepted'], 1) * 1e6:,.0f} µs of intake CPU per job; "
          f"other processes on the machine {result['machine_cpu']['others_share_of_machine']:.0%} of it")
    print(f"  accepted {result['accepted']}, rejected {result['rejected']}; job records in KV "
          f"{result['kv_jobs_records']}; REQUESTS left {result['requests_stream_left']}; "
          f"work items waiting for the (absent) validator {result['work_items_waiting']}")
    write_result(args.out, {
        "benchmark": "submit_throughput",
        "command": "python -m bench." + Path(__file__).stem + " " + " ".join(sys.argv[1:]),
        "params": {"requests": args.requests, "names": args.names, "in_flight": args.in_flight},
        "machine": {**info, "load_avg_1m_at_end": os.getloadavg()[0]},
        "leftover_processes": not clean,
        **result,
    })
    complete = result["accepted"] == args.requests and result["kv_jobs_records"] == args.requests
    return 0 if clean and complete else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.submit_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="job requests published (default 10000)")
    parser.add_argument("--names", type=int, default=100,
                        help="distinct job names; each name gets requests/names versions (default 100)")
    parser.add_argument("--in-flight", type=int, default=4000, help="publishes awaiting a PubAck at most")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for every request to be accepted (default 900)")
    parser.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--out", help="write the result as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
