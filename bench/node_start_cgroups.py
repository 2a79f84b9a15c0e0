"""Node start on an agent with and without a cgroup per node: Assign -> "running" report.

    python -m bench.node_start_cgroups [--jobs 20] [--warmup 2] [--out result.json]

Starts nats-server and two executor agents in a temporary directory, one with
``TM_AGENT_CGROUPS=off`` and one with ``required`` (root, a host with cgroups), and sends each, in
turn and one at a time, the Assign of a trivial framework job (a boot file that prints one line,
run by the agent's own Python: no runtime to build).  The clock starts right before the Assign is
published and stops when the agent's "running" report reaches a plain core-NATS subscription; the
next Assign goes out once the node has exited.  Interleaving the two agents keeps the machine's
load the same for both.
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

import msgspec
import nats

from bench._common import REPO, print_table, summarize, write_result
from trainmaster.bus import provision
from trainmaster.messages import Algorithm, Assign, DataSource, JobRequest, NodeReport, encode
from trainmaster.natsd import NatsServer
from trainmaster.topology import Topology

TOPO = Topology()
MODES = ("off", "required")


def start_agent(nats_url: str, root: Path, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TM_NATS_URL": nats_url, "TM_AGENT_ID": f"bench-{mode}", "TM_DATA_DIR": str(root / mode),
           "TM_AGENT_CGROUPS": mode, "TM_HEARTBEAT_INTERVAL_S": "0.5"}
    with (root / f"agent-{mode}.log").open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "services.executor_agent"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


async def measure(nats_url: str, root: Path, jobs: int, warmup: int) -> dict[str, list[float]]:
    code = root / "code"
    code.mkdir()
    (code / "main.py").write_text('print("hello")\n')
    (root / "input").mkdir()
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await provision(js, TOPO)
    reports: asyncio.Queue[NodeReport] = asyncio.Queue()

    async def on_report(msg: nats.aio.msg.Msg) -> None:
        await reports.put(msgspec.json.decode(msg.data, type=NodeReport))

    await nc.subscribe(TOPO.agent_status("*"), cb=on_report)
    seen: set[str] = set()
    async with asyncio.timeout(60):  # both agents up
        while len(seen) < len(MODES):
            msg = await nc.subscribe(TOPO.agent_heartbeat("*"))
            first = await msg.next_msg(timeout=60)
            seen.add(first.subject.rsplit(".", 1)[1])
            await msg.unsubscribe()
    timings: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i in range(warmup + jobs):
        for mode in MODES:
            job_id = f"job-{mode}-{i}"
            spec = JobRequest(name="t", data=[DataSource(path=str(root / "input"))],
                              algorithm=Algorithm(source="framework", code_dir=str(code), boot_file="main.py"),
                              output_path=str(root / "out" / job_id), log_path=str(root / "logs"))
            command = Assign(job_id=job_id, attempt=1, node=0, node_count=1, spec=spec, name="t", version="V001")
            started = time.perf_counter()
            await js.publish(TOPO.agent_control(f"bench-{mode}"), encode(command), stream=TOPO.stream_agent.name)
            running_at: float | None = None
            async with asyncio.timeout(60):
                while True:
                    report = await reports.get()
                    if report.job_id != job_id:
                        continue
                    if report.state == "running" and running_at is None:
                        running_at = time.perf_counter()
                    if report.state == "exited":
                        assert report.exit_code == 0, report
                        break
            assert running_at is not None
            if i >= warmup:
                timings[mode].append(running_at - started)
    await nc.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tm-node-start-") as tmp:
        root = Path(tmp)
        server = NatsServer(store_dir=root / "nats", port=-1)
        url = server.start()
        agents = [start_agent(url, root, mode) for mode in MODES]
        try:
            timings = asyncio.run(measure(url, root, args.jobs, args.warmup))
        finally:
            for agent in agents:
                agent.terminate()
                agent.wait(30)
            server.stop()
    rows = [(f"Assign -> running, cgroups {mode}", summarize(timings[mode])) for mode in MODES]
    print_table(rows)
    write_result(args.out, {"node_start_s": timings})


if __name__ == "__main__":
    main()
