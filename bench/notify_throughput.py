"""Signed webhook deliveries per second from one notifier process to 100 local receivers, and
the time from a job event's publication to its delivery (p50/p99).

    python -m bench.notify_throughput [--receivers 100] [--events 300] [--paced-rate 20] [--json FILE]
                                      [--before REF] [--rounds 1] [--profile DIR]

What runs: a nats-server (temporary store), the notifier as its own process (`python -m
services.notifier`), and one more process holding 100 aiohttp receivers on 127.0.0.1 that verify
every delivery with the official `standardwebhooks` package and note when it arrived.  One topic
has 100 webhook subscriptions; each job event fans out to 100 signed deliveries.
Two phases: a burst (every event published at once: the sustained rate the notifier reaches)
and a paced phase (events at a fixed rate below saturation: the latency a delivery sees).
On a 2-core machine the receivers, nats-server, the notifier and this driver share the cores:
the figure is for the whole set, not the notifier alone (its own CPU use is printed, and the
share of the machine that processes outside the benchmark used).

Correctness at the rate: the receivers count each webhook-id once; a delivery whose signature does
not verify, a webhook-id received twice, and a delivery that never came are printed (bad,
duplicates, lost).

``--before REF`` measures, in the same run, the notifier of git revision REF (its tree extracted
with ``git archive``, the rest of the set unchanged) and then this checkout's, ``--rounds`` times
in turn: the ratio is what a shared machine lets one compare.  ``--profile DIR`` records the
notifier's burst with py-spy (``DIR/<label>-<run>.folded``: collapsed stacks, for `flamegraph.pl` or speedscope).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nats

from bench._common import REPO, CpuWatch, cpu_seconds, machine, summarize
from trainmaster.bus import provision
from trainmaster.client import Client
from trainmaster.messages import (
    HistoryEntry,
    JobCloudEvent,
    JobEventData,
    JobRecord,
    JobRequest,
    Status,
    Subscription,
    encode,
)
from trainmaster.natsd import NatsServer
from trainmaster.procs import child_preexec
from trainmaster.secretbox import ensure_key_file
from trainmaster.topology import Topology

TOPO = Topology()


# ------------------------------------------------------------------------------ receivers (own process)
async def serve_receivers(config: dict) -> None:
    from aiohttp import web
    from standardwebhooks import Webhook

    hooks = [Webhook(s) for s in config["secrets"]]
    latencies: list[float] = []
    seen: set[str] = set()
    bad = [0]
    duplicates = [0]

    def handler(i: int):
        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            now = time.time()
            try:
                hooks[i].verify(body, dict(request.headers), json_parse=False)
            except Exception:
                bad[0] += 1
                return web.Response(status=400)
            webhook_id = request.headers["webhook-id"]
            if webhook_id in seen:
                duplicates[0] += 1
                return web.Response(status=204)
            seen.add(webhook_id)
            event_time = datetime.fromisoformat(json.loads(body)["time"]).timestamp()
            latencies.append(now - event_time)
            return web.Response(status=204)
        return receive

    async def stats(request: web.Request) -> web.Response:
        full = request.query.get("full")
        answer = {"count": len(latencies), "bad": bad[0], "duplicates": duplicates[0],
                  **({"latencies": list(latencies)} if full else {})}
        if request.query.get("reset"):
            latencies.clear()
            bad[0] = duplicates[0] = 0
        return web.json_response(answer)

    runners, ports = [], []
    for i in range(len(hooks) + 1):
        app = web.Application()
        if i < len(hooks):
            app.router.add_post("/hook", handler(i))
        else:
            app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        runners.append(runner)
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    await asyncio.to_thread(Path(config["ports_file"]).write_text, json.dumps(ports))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


# ------------------------------------------------------------------------------ the driver
def job(i: int) -> JobRecord:
    now = time.time()
    spec = JobRequest(name=f"bench-{i}", output_path=f"/srv/out/bench-{i}", log_path=f"/srv/logs/bench-{i}",
                      subscription=Subscription("bench", ["OnJobSucceeded"]))
    return JobRecord(id=f"job-bench-{i}", name=spec.name or "", version="V001", status=Status.RUNNING, spec=spec,
                     request_id=f"r{i}", created_at=now, updated_at=now,
                     history=[HistoryEntry(0, now, "submitted", Status.INITIALIZING, "submitted")])


def event(record: JobRecord) -> JobCloudEvent:
    return JobCloudEvent(
        id=f"{record.id}.9", source="trainmaster/bench", type="tm.job.succeeded", subject=record.id,
        time=datetime.now(UTC).isoformat(),
        data=JobEventData(job_id=record.id, name=record.name, version="V001", status=Status.SUCCEEDED,
                          previous_status=Status.RUNNING, change="bench", exit_code=0,
                          output_path=record.spec.output_path, log_path=record.spec.log_path))


async def stats(stats_url: str, full: bool = False, reset: bool = False) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        params = {**({"full": "1"} if full else {}), **({"reset": "1"} if reset else {})}
        async with s.get(stats_url, params=params) as r:
            return await r.json()


async def wait_count(stats_url: str, target: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await stats(stats_url))["count"] >= target:
            return time.perf_counter()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"only {(await stats(stats_url))['count']} of {target} deliveries in {timeout_s}s")


async def drive(args: argparse.Namespace, url: str, stats_url: str, ports: list[int], hook_secrets: list[str],
                pids: dict[str, int], profile: Path | None) -> dict:
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.key_value(TOPO.bucket_jobs.name)
    async with Client(url) as client:
        await client.topics.create("bench")
        for port, secret in zip(ports, hook_secrets, strict=True):
            await client.topics.subscribe("bench", "webhook", f"http://127.0.0.1:{port}/hook", secret=secret)
    total_events = args.events + args.paced_events + 1
    records = [job(i) for i in range(total_events)]
    await asyncio.gather(*(kv.put(r.id, encode(r)) for r in records))
    n = len(ports)

    async def publish(record: JobRecord) -> None:
        e = event(record)
        await js.publish(TOPO.job_events(record.id), encode(e), headers={"Nats-Msg-Id": e.id})

    # warm-up: one event (connections opened, code paths warm)
    await publish(records[0])
    await wait_count(stats_url, n, 30)
    await stats(stats_url, reset=True)

    # burst
    spy = start_profile(pids["notifier"], profile) if profile else None
    watch = CpuWatch(pids.values())
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    await asyncio.gather(*(publish(r) for r in records[1:args.events + 1]))
    published = time.perf_counter() - t0
    t1 = await wait_count(stats_url, args.events * n, 600)
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    burst_cpu = cpu["notifier"]
    machine_cpu = watch.stop()
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on an interrupt
        await asyncio.to_thread(spy.wait, 60)
    await asyncio.sleep(1.0)  # a duplicate sent right after the last first copy is still counted
    burst = await stats(stats_url, full=True, reset=True)
    burst_s = t1 - t0

    # paced
    paced: dict = {}
    paced_cpu: dict = {}
    if args.paced_events:
        paced_watch = CpuWatch(pids.values())
        t0 = time.perf_counter()
        for i, r in enumerate(records[args.events + 1:]):
            await asyncio.sleep(max(0.0, t0 + i / args.paced_rate - time.perf_counter()))
            await publish(r)
        await wait_count(stats_url, args.paced_events * n, 300)
        paced_cpu = paced_watch.stop()
        await asyncio.sleep(1.0)
        paced = await stats(stats_url, full=True)
    await nc.close()
    expected = args.events * n
    return {
        "receivers": n,
        "burst": {"events": args.events, "deliveries": burst["count"], "bad_signatures": burst["bad"],
                  "duplicates": burst["duplicates"], "lost": max(expected - burst["count"], 0),
                  "publish_s": published, "seconds": burst_s, "deliveries_per_s": burst["count"] / burst_s,
                  "notifier_cpu_s": burst_cpu, "notifier_cpu_us_per_delivery": burst_cpu / expected * 1e6,
                  "cpu_s": cpu, "machine_cpu": machine_cpu, "latency_s": summarize(burst["latencies"])},
        "paced": {"events_per_s": args.paced_rate, "deliveries_per_s_offered": args.paced_rate * n,
                  "deliveries": paced.get("count", 0), "bad_signatures": paced.get("bad", 0),
                  "duplicates": paced.get("duplicates", 0),
                  "lost": max(args.paced_events * n - paced.get("count", 0), 0), "machine_cpu": paced_cpu,
                  "latency_s": summarize(paced.get("latencies", []))} if paced else {},
    }


def start_profile(pid: int, out: Path) -> subprocess.Popen:
    """py-spy on the notifier for the burst (stopped with SIGINT once the burst is received)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--format", "raw",
                             "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def source_tree(ref: str, parent: Path) -> Path:
    """The files of git revision ``ref`` (the notifier and the library it imports), for an A/B run."""
    tree = parent / f"tree-{_file_name(ref)}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "services", "libs"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def measure(args: argparse.Namespace, tmp: Path, tree: Path | None, label: str) -> dict:
    """One whole set (nats-server, receivers, notifier) and one burst + paced run against it;
    ``tree``: run the notifier from that source tree instead of this checkout."""
    tmp.mkdir(parents=True)
    server = NatsServer(store_dir=tmp / "nats", port=-1)
    procs: list[subprocess.Popen] = []
    try:
        url = server.start()
        asyncio.run(_provision(url))
        hook_secrets = ["whsec_" + base64.b64encode(secrets.token_bytes(24)).decode() for _ in range(args.receivers)]
        config = tmp / "receivers.json"
        config.write_text(json.dumps({"secrets": hook_secrets, "ports_file": str(tmp / "ports.json")}))
        receivers = subprocess.Popen([sys.executable, "-m", "bench.notify_throughput", "--serve-receivers",
                                      str(config)], cwd=REPO, preexec_fn=child_preexec)
        procs.append(receivers)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
        ensure_key_file(tmp / "secrets.key")
        env.update(TM_NATS_URL=url, TM_DATA_DIR=str(tmp / "data"), TM_WEBHOOK_ALLOW_PRIVATE="true",
                   TM_LOG_LEVEL="WARNING", TM_NOTIFY_MAX_IN_FLIGHT=str(args.max_in_flight),
                   TM_SECRETS_KEY_FILE=str(tmp / "secrets.key"))
        if tree is not None:  # its packages ahead of this checkout's (the editable install's finder comes last)
            env["PYTHONPATH"] = os.pathsep.join([str(tree / "libs"), str(tree)])
        log = open(tmp / "notifier.log", "wb")
        notifier = subprocess.Popen([sys.executable, "-m", "services.notifier"], cwd=tree or REPO, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_preexec)
        procs.append(notifier)
        ports_file = tmp / "ports.json"
        deadline = time.monotonic() + 30
        while not ports_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("receivers did not start")
            time.sleep(0.05)
        time.sleep(0.1)
        ports = json.loads(ports_file.read_text())
        asyncio.run(_wait_notifier(url))
        assert server.proc is not None
        pids = {"notifier": notifier.pid, "receivers": receivers.pid, "nats-server": server.proc.pid}
        profile = args.profile / f"{_file_name(label)}-{tmp.name}.folded" if args.profile else None
        result = asyncio.run(drive(args, url, f"http://127.0.0.1:{ports[-1]}/stats", ports[:-1], hook_secrets,
                                   pids, profile))
        result["label"] = label
        return result
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--receivers", type=int, default=100)
    ap.add_argument("--events", type=int, default=300, help="events in the burst (each: one delivery per receiver)")
    ap.add_argument("--paced-events", type=int, default=200)
    ap.add_argument("--paced-rate", type=float, default=20.0, help="events per second in the paced phase")
    ap.add_argument("--max-in-flight", type=int, default=512)
    ap.add_argument("--before", metavar="REF", help="also measure the notifier of this git revision, in turn")
    ap.add_argument("--rounds", type=int, default=1, help="with --before: how many before/after pairs")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy profile of each burst into DIR")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--serve-receivers", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_receivers:
        asyncio.run(serve_receivers(json.loads(args.serve_receivers.read_text())))
        return

    tmp = Path(tempfile.mkdtemp(prefix="tm-bench-notify-"))
    try:
        before = source_tree(args.before, tmp) if args.before else None
        runs: list[dict] = []
        for i in range(args.rounds if before else 1):
            if before is not None:
                runs.append(measure(args, tmp / f"before-{i}", before, f"before-{args.before}"))
                report(runs[-1])
            runs.append(measure(args, tmp / f"after-{i}", None, "this checkout"))
            report(runs[-1])
        result = {"machine": machine(), "command": "python -m bench.notify_throughput " + " ".join(sys.argv[1:]),
                  "runs": runs}
        if before is not None:
            ratio = [a["burst"]["deliveries_per_s"] / b["burst"]["deliveries_per_s"]
                     for b, a in zip(runs[::2], runs[1::2], strict=True)]
            result["after_over_before"] = ratio
            print("after / before, deliveries/s per round: " + ", ".join(f"{r:.2f}x" for r in ratio))
        m = result["machine"]
        print(f"machine: {m['nproc']} CPUs, {m['cpu']}, python {m['python']}, {m['nats_server']}, {m['date_utc']}, "
              f"load average at the end {os.getloadavg()[0]:.1f}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _provision(url: str) -> None:
    nc = await nats.connect(url)
    await provision(nc.jetstream(), TOPO)
    await nc.close()


async def _wait_notifier(url: str) -> None:
    nc = await nats.connect(url)
    try:
        for _ in range(300):
            try:
                await nc.request(TOPO.topics("list"), b"{}", timeout=1)
                return
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)
        raise TimeoutError("the notifier did not answer")
    finally:
        await nc.close()


def report(r: dict) -> None:
    b, p = r["burst"], r["paced"]
    c = b["machine_cpu"]
    print(f"[{r['label']}] burst: {b['events']} events x {r['receivers']} receivers = {b['deliveries']} signed "
          f"deliveries in {b['seconds']:.2f} s -> {b['deliveries_per_s']:.0f} deliveries/s "
          f"(bad signatures {b['bad_signatures']}, duplicates {b['duplicates']}, lost {b['lost']}; notifier CPU "
          f"{b['notifier_cpu_s']:.1f} s = {b['notifier_cpu_us_per_delivery']:.0f} us/delivery)")
    print("  CPU during the burst: " + ", ".join(f"{name} {s:.1f} s" for name, s in b["cpu_s"].items())
          + f"; processes outside the benchmark {c['others_cpu_s']:.1f} s = {c['others_share_of_machine']:.0%} "
          "of the machine")
    lat = b["latency_s"]
    print(f"  event -> delivery in the burst: p50 {lat['p50'] * 1000:.0f} ms, p99 {lat['p99'] * 1000:.0f} ms, "
          f"max {lat['max'] * 1000:.0f} ms")
    if p:
        lat = p["latency_s"]
        print(f"  paced: {p['events_per_s']:.0f} events/s = {p['deliveries_per_s_offered']:.0f} deliveries/s offered, "
              f"{p['deliveries']} delivered (bad {p['bad_signatures']}, duplicates {p['duplicates']}, lost "
              f"{p['lost']}): p50 {lat['p50'] * 1000:.0f} ms, p99 {lat['p99'] * 1000:.0f} ms, "
              f"max {lat['max'] * 1000:.0f} ms; processes outside the benchmark "
              f"{p['machine_cpu']['others_share_of_machine']:.0%} of the machine")


if __name__ == "__main__":
    main()
