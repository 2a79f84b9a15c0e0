"""How long an agent takes to start a node: from the Assign to the node's ``running`` report.

    python -m bench.node_start [--runs 20] [--before DIR] [--out result.json]

Starts one nats-server and one executor agent per code version, each its own process: this
checkout, and with ``--before`` another checkout of the code (e.g. ``git archive <commit> | tar -x
-C DIR``) run with the same interpreter and packages.  The agents get trivial framework jobs (a boot
file that prints one line, no engine: no runtime to build) one at a time, alternating between the
versions so that a busy neighbour slows both alike.  The clock starts right before the Assign is
published and stops when the agent's ``running`` report reaches the benchmark (a plain
subscription on the agent's status subject); that covers planning, the run folder, the spawn with
its pre-exec (the job user, no_new_privs) and the report.  Two warm-up jobs per agent are left out.
Run it as root to measure the job user's switch (the agent only switches users as root).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.msg import Msg

from bench._common import REPO, machine, print_table, summarize, trivial_job_files, write_result
from trainmaster.bus import provision
from trainmaster.messages import Algorithm, Assign, DataSource, JobRequest, NodeReport
from trainmaster.natsd import NatsServer
from trainmaster.topology import Topology

TOPO = Topology()
WARMUP = 2


def start_agent(checkout: Path, agent_id: str, nats_url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TM_")},
           "PYTHONPATH": f"{checkout}:{checkout / 'libs'}", "TM_NATS_URL": nats_url, "TM_AGENT_ID": agent_id,
           "TM_DATA_DIR": str(data_dir), "TM_HEARTBEAT_INTERVAL_S": "0.5", "TM_LOG_LEVEL": "WARNING"}
    log = (data_dir / f"{agent_id}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "services.executor_agent"], cwd=checkout, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def body(command: Assign) -> bytes:
    """The Assign, without the fields older agents do not know (when they hold nothing)."""
    data = msgspec.to_builtins(command)
    if not data["spec"].get("env"):
        data["spec"].pop("env", None)
    return msgspec.json.encode(data)


async def measure(runs: int, checkouts: dict[str, Path], work: Path) -> dict[str, list[float]]:
    server = NatsServer(store_dir=work / "nats", port=-1)
    url = server.start()
    agents: list[subprocess.Popen[bytes]] = []
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await provision(js, TOPO)
        reports: dict[tuple[str, str], asyncio.Future[float]] = {}
        report_of: dict[str, NodeReport] = {}
        beating: set[str] = set()

        async def on_report(msg: Msg) -> None:
            report = msgspec.json.decode(msg.data, type=NodeReport)
            report_of[report.job_id] = report
            waiter = reports.get((report.job_id, report.state))
            if waiter is not None and not waiter.done():
                waiter.set_result(time.perf_counter())

        async def on_heartbeat(msg: Msg) -> None:
            beating.add(msg.subject.rsplit(".", 1)[-1])

        await nc.subscribe(TOPO.agent_status("*"), cb=on_report)
        await nc.subscribe(TOPO.agent_heartbeat("*"), cb=on_heartbeat)
        for name, checkout in checkouts.items():
            agents.append(start_agent(checkout, f"bench-{name}", url, work / name))
        deadline = time.monotonic() + 60
        while len(beating) < len(checkouts):
            if time.monotonic() > deadline:
                raise SystemExit(f"agents did not come up; see the logs in {work}")
            await asyncio.sleep(0.1)

        code, data = trivial_job_files(work / "job")
        spec = JobRequest(name="noop", data=[DataSource(path=str(data))],
                          algorithm=Algorithm(source="framework", code_dir=str(code), boot_file="boot.py"))
        times: dict[str, list[float]] = {name: [] for name in checkouts}
        for i in range(WARMUP + runs):
            for name in checkouts:
                job_id = f"noop-{name}-{i}"
                running = reports[(job_id, "running")] = asyncio.get_running_loop().create_future()
                exited = reports[(job_id, "exited")] = asyncio.get_running_loop().create_future()
                command = Assign(job_id=job_id, attempt=1, node=0, node_count=1, spec=spec, name="noop",
                                 version="V001")
                started = time.perf_counter()
                await js.publish(TOPO.agent_control(f"bench-{name}"), body(command), stream=TOPO.stream_agent.name)
                await asyncio.wait([running, exited], timeout=60, return_when=asyncio.FIRST_COMPLETED)
                if not running.done():
                    raise SystemExit(f"{job_id} did not start: {report_of.get(job_id)}; see the logs in {work}")
                seen = running.result()
                await asyncio.wait_for(exited, 60)
                if i >= WARMUP:
                    times[name].append(seen - started)
                await asyncio.sleep(0.05)
        return times
    finally:
        await nc.close()
        for agent in agents:
            agent.terminate()
            agent.wait(30)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--before", type=Path, help="another checkout of the code, measured alongside")
    parser.add_argument("--out")
    args = parser.parse_args()
    checkouts = {"this": REPO}
    if args.before:
        checkouts = {"before": args.before.resolve(), **checkouts}
    work = Path(tempfile.mkdtemp(prefix="tm-node-start-"))
    work.chmod(0o711)  # the job user crosses it to the run folders and the job's files
    for name in checkouts:
        (work / name).mkdir()
    times = asyncio.run(measure(args.runs, checkouts, work))
    stats = {name: summarize(values) for name, values in times.items()}
    print_table((f"assign -> running ({name})", s) for name, s in stats.items())
    result: dict[str, Any] = {"machine": machine(), "runs": args.runs, "as_root": os.geteuid() == 0,
                              "seconds": times, "summary": stats}
    if "before" in stats:
        delta = {k: stats["this"][k] - stats["before"][k] for k in ("p50", "mean")}
        result["delta_s"] = delta
        print(f"this - before: p50 {delta['p50'] * 1000:+.1f} ms, mean {delta['mean'] * 1000:+.1f} ms")
    write_result(args.out, result)
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
