"""Jobs accepted per second on ``tm.jobs.submit``.

    python -m bench.submit_throughput [--requests 20000] [--names 100] [--before DIR] [--profile FILE]
                                      [--out result.json]

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
and the checks: every request accepted exactly once (one job record per request id in the jobs
KV bucket, the job its events name), the versions of each name unique and consecutive (V001 ..
Vn), nothing lost (the REQUESTS stream drained, one validation work item per job).

``--before DIR`` (another checkout of the code, e.g. ``git archive <commit> | tar -x -C DIR``)
measures that code first, in the same run, on a fresh nats-server of its own, with the same
interpreter and packages; the ratio is printed.  ``--profile FILE`` records this checkout's intake
with py-spy while it accepts (``.svg``: a flame graph; otherwise collapsed stacks, a text file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.msg import Msg

from bench._common import (
    REPO,
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
from trainmaster.topology import Topology


class _Stored(msgspec.Struct):
    """What the checks read of a job record."""

    id: str
    name: str
    version: str
    request_id: str


_decode_stored = msgspec.json.Decoder(_Stored).decode


def check_records(records: list[_Stored], request_ids: list[str], accepted: dict[str, str]) -> dict[str, Any]:
    """Every request accepted exactly once (one record per request id, the job its accepted event
    named), the versions of each name unique and consecutive from V001."""
    by_request: dict[str, list[_Stored]] = {}
    by_name: dict[str, list[str]] = {}
    for r in records:
        by_request.setdefault(r.request_id, []).append(r)
        by_name.setdefault(r.name, []).append(r.version)
    missing = [rid for rid in request_ids if rid not in by_request]
    twice = [rid for rid, rs in by_request.items() if len(rs) > 1]
    wrong_job = [rid for rid, job in accepted.items() if rid in by_request and by_request[rid][0].id != job]
    not_consecutive = [
        name for name, versions in by_name.items()
        if sorted(versions, key=lambda v: int(v[1:])) != [f"V{n:03d}" for n in range(1, len(versions) + 1)]
    ]
    return {
        "records": len(records),
        "requests_without_record": len(missing),
        "requests_with_more_than_one_record": len(twice),
        "accepted_event_names_another_job": len(wrong_job),
        "names": len(by_name),
        "names_with_versions_not_unique_and_consecutive": len(not_consecutive),
        "ok": not missing and not twice and not wrong_job and not not_consecutive,
    }


async def read_records(js: Any, bucket: str) -> list[_Stored]:
    """Every job record of the bucket (the latest value of each key), through one ordered consumer."""
    kv = await js.key_value(bucket)
    watcher = await kv.watchall(include_history=False)
    found: dict[str, _Stored] = {}
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value:
                found[entry.key] = _decode_stored(entry.value)
    finally:
        await watcher.stop()
    return list(found.values())


class AcceptCounter:
    """Counts distinct request ids accepted (a core subscriber also sees duplicate publishes)."""

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.accepted: dict[str, float] = {}
        self.jobs: dict[str, str] = {}  # request id -> the job its first accepted event named
        self.other_jobs = 0  # accepted events of one request naming different jobs
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
            job = self.jobs.setdefault(request_id, event["data"]["job"]["id"])
            self.other_jobs += job != event["data"]["job"]["id"]
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
                pids: dict[str, int], profile: Path | None) -> dict[str, Any]:
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
        spy = start_profile(profile, pids["job-intake"]) if profile else None
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
            if spy is not None:
                await asyncio.to_thread(stop_profile, spy)
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
        records = await read_records(js, topo.bucket_jobs.name)
        checks = check_records(records, request_ids, counter.jobs)
    finally:
        await nc.close()
    checks["accepted_events_naming_another_job"] = counter.other_jobs
    checks["requests_left"] = requests_info.state.messages
    checks["work_items_not_one_per_job"] = work_info.state.messages != len(records)
    checks["ok"] = (checks["ok"] and not counter.other_jobs and not requests_info.state.messages
                    and not checks["work_items_not_one_per_job"] and n == args.requests)

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
        "checks": checks,
        "timeline": timeline,
    }


def start_profile(path: Path, pid: int) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` until ``stop_profile``."""
    fmt = "flamegraph" if path.suffix == ".svg" else "raw"
    path.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--rate", "200",
                            "--format", fmt, "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # attached before the first publish
    return spy


def stop_profile(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    print(f"py-spy: {err.decode(errors='replace').strip().splitlines()[-1:] or 'done'}", file=sys.stderr)


def start_intake(checkout: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """job-intake of ``checkout`` (its own code first on the path), with this interpreter."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(env, PYTHONPATH=f"{checkout}:{checkout / 'libs'}")
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "services.job_intake"], cwd=checkout, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


async def measure(checkout: Path, args: argparse.Namespace, profile: Path | None) -> dict[str, Any]:
    """One round: a fresh nats-server and job-intake of ``checkout``, the requests, the checks."""
    root = Path(tempfile.mkdtemp(prefix="tm-bench-submit-"))
    settings = Settings(data_dir=root / "stack", nats_port=-1)
    data_dir = settings.embedded.data_dir.resolve()
    server = NatsServer(store_dir=data_dir / "nats", host=settings.embedded.nats_host, port=-1,
                        log_file=data_dir / "logs" / "nats-server.log")
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    intake: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {}
    error: BaseException | None = None
    try:
        url = await asyncio.to_thread(server.start)
        nc = await nats.connect(url)
        await provision(nc.jetstream(), Topology(settings.bus.subject_prefix, settings.bus.stream_replicas))
        await nc.close()
        env = dict(os.environ, TM_NATS_URL=url, TM_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
        intake = start_intake(checkout, env, data_dir / "logs" / "job-intake.log")
        await wait_for_intake(url, settings.bus.subject_prefix)
        print(f"nats-server at {url} and job-intake of {checkout} (pid {intake.pid}) up; data in {root}",
              file=sys.stderr)
        assert server.proc is not None
        result = await drive(url, settings, root, args, {"job-intake": intake.pid, "nats-server": server.proc.pid},
                             profile)
    except (Exception, asyncio.CancelledError) as exc:
        error = exc
    finally:
        pids = [p.pid for p in (server.proc, intake) if p is not None]
        if intake is not None and intake.poll() is None:
            intake.terminate()
            try:
                await asyncio.to_thread(intake.wait, 20)
            except Exception:
                intake.kill()
                await asyncio.to_thread(intake.wait)
        await asyncio.to_thread(server.stop)
        result["leftover_processes"] = not report_leftovers(root, pids)
        if args.keep or (error is not None and not isinstance(error, asyncio.CancelledError)):
            print(f"kept {root} (logs in {data_dir / 'logs'})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if error is not None:
        raise error
    return result


def report(label: str, result: dict[str, Any]) -> None:
    pub, acc, checks = result["publish"], result["accept"], result["checks"]
    print(f"{label}:")
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
          f"{checks['records']}; REQUESTS left {checks['requests_left']}; "
          f"work items waiting for the (absent) validator {result['work_items_waiting']}")
    print(f"  checks: {'OK' if checks['ok'] else 'FAILED'}: every request accepted exactly once "
          f"(without a record {checks['requests_without_record']}, with more than one "
          f"{checks['requests_with_more_than_one_record']}, accepted naming another job "
          f"{checks['accepted_event_names_another_job'] + checks['accepted_events_naming_another_job']}); "
          f"versions unique and consecutive per name ({checks['names']} names, "
          f"{checks['names_with_versions_not_unique_and_consecutive']} not); nothing lost (REQUESTS drained, "
          f"one work item per job: {'no' if checks['work_items_not_one_per_job'] else 'yes'})")


async def main_async(args: argparse.Namespace) -> int:
    cancel_on_signals()
    info = machine()
    checkouts = {"this": REPO}
    if args.before:
        checkouts = {"before": args.before.resolve(), **checkouts}
    results: dict[str, dict[str, Any]] = {}
    try:
        for label, checkout in checkouts.items():
            print(f"--- {label}: {checkout}", file=sys.stderr)
            results[label] = await measure(checkout, args, args.profile if label == "this" else None)
    except (Exception, asyncio.CancelledError) as exc:
        why = "interrupted" if isinstance(exc, asyncio.CancelledError) else f"{type(exc).__name__}: {exc}"
        print(f"benchmark failed: {why}", file=sys.stderr)
        return 1

    print(f"\ntm.jobs.submit throughput, {args.requests} distinct valid requests ({args.names} job names), "
          f"pipelined ({args.in_flight} in flight); only nats-server + job-intake running; "
          f"{info['nproc']} CPUs, {info['date_utc']}")
    for label, result in results.items():
        report(f"{label} ({checkouts[label]})", result)
    if "before" in results:
        ratio = results["this"]["accept"]["per_second"] / results["before"]["accept"]["per_second"]
        print(f"this / before: {ratio:.2f} x the accepted jobs/s")
    write_result(args.out, {
        "benchmark": "submit_throughput",
        "command": "python -m bench." + Path(__file__).stem + " " + " ".join(sys.argv[1:]),
        "params": {"requests": args.requests, "names": args.names, "in_flight": args.in_flight},
        "machine": {**info, "load_avg_1m_at_end": os.getloadavg()[0]},
        **results["this"],
        **({"before": {"checkout": str(checkouts["before"]), **results["before"]}} if "before" in results else {}),
    })
    complete = all(r["checks"]["ok"] and not r["leftover_processes"] for r in results.values())
    return 0 if complete else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.submit_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="job requests published (default 20000)")
    parser.add_argument("--names", type=int, default=100,
                        help="distinct job names; each name gets requests/names versions (default 100)")
    parser.add_argument("--in-flight", type=int, default=4000, help="publishes awaiting a PubAck at most")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for every request to be accepted (default 900)")
    parser.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--out", help="write the result as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--before", type=Path, help="another checkout of the code, measured first in the same run")
    parser.add_argument("--profile", type=Path, help="py-spy record of this checkout's intake (.svg or collapsed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
