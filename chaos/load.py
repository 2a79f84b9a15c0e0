"""The load: real jobs submitted through the public contract (``tm.jobs.submit`` with a
``Nats-Msg-Id`` request id), at a steady rate, whatever happens to the services meanwhile.

A publish that fails (no server, a fail-over, a full disk) is retried with the same request id
until the server acknowledges it or ``give_up_s`` passes: only an acknowledged request counts as
accepted by the system, so only those must come out the other end.

The boot file records each start of a node (job, attempt, node, pid, start, end) under
``runs/`` and holds an ``flock`` on ``<job>.<attempt>.<node>.lock`` while it runs: a second live
process of the same node finds the lock held and says so (``clash``), which proves a concurrent
run even when both are later killed before writing their end time."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from chaos.model import Submission
from trainmaster.topology import Topology

BOOT_FILE = r'''
import fcntl, json, os, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
job, attempt, node = os.environ["TM_JOB_ID"], int(os.environ["TM_ATTEMPT"]), int(os.environ.get("RANK", "0"))
runs = args["runs_dir"]
key = f"{job}.{attempt}.{node}"
lock = open(os.path.join(runs, key + ".lock"), "a")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    clash = False
except BlockingIOError:
    clash = True
record = {"job_id": job, "attempt": attempt, "node": node, "pid": os.getpid(), "start": time.time(),
          "end": None, "clash": clash}
path = os.path.join(runs, f"{key}.{os.getpid()}.json")

def save():
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)

save()
time.sleep(float(args["sleep_s"]))
out = args["train_url"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, f"node{node}.txt"), "w") as f:
    f.write(f"{key} done\n")
record["end"] = time.time()
save()
'''

# what a job asks to hear about (terminal statuses: each must reach the webhook receiver)
SUBSCRIBED_EVENTS = ["OnJobSucceeded", "OnJobFailed", "OnJobStopped"]


@dataclass
class Mix:
    """Shares of the job kinds and how long each sleeps (seconds)."""

    short: float = 0.75
    long: float = 0.15
    multi: float = 0.10
    short_s: tuple[float, float] = (0.2, 1.0)
    long_s: tuple[float, float] = (5.0, 20.0)
    multi_s: tuple[float, float] = (1.0, 3.0)

    def pick(self, rng: random.Random) -> tuple[str, float, int]:
        roll = rng.random()
        if roll < self.short:
            return "short", rng.uniform(*self.short_s), 1
        if roll < self.short + self.long:
            return "long", rng.uniform(*self.long_s), 1
        return "multi", rng.uniform(*self.multi_s), 3


def prepare(root: Path) -> tuple[Path, Path, Path]:
    code, data, runs = root / "code", root / "input", root / "runs"
    for folder in (code, data, runs):
        folder.mkdir(parents=True, exist_ok=True)
    # the jobs leave their records here, running as the agents' job user: anyone may add a file
    runs.chmod(0o1777)
    (code / "boot.py").write_text(BOOT_FILE)
    (data / "rows.csv").write_text("x,y\n1,2\n")
    return code, data, runs


def job_request(root: Path, name: str, sleep_s: float, nodes: int, topic: str) -> dict[str, Any]:
    code, data, runs = root / "code", root / "input", root / "runs"
    return {
        "name": name,
        "data": [{"path": str(data)}],
        "algorithm": {"source": "framework", "engine": "scikit-learn", "code_dir": str(code), "boot_file": "boot.py"},
        "parameters": {"sleep_s": round(sleep_s, 3), "runs_dir": str(runs)},
        "output_path": str(root / "out" / name),
        "log_path": str(root / "logs" / name),
        "resources": {"pool": "cpu", "node_count": nodes},
        # a lost agent or a killed node is retried: the faults should not simply fail jobs
        "retry": {"max_retries": 3, "retry_exit_codes": [137, 143], "retry_on_agent_lost": True},
        "subscription": {"topic": topic, "events": SUBSCRIBED_EVENTS},
    }


@dataclass
class Load:
    nc: NATS
    root: Path
    rng: random.Random
    topic: str = "chaos"
    mix: Mix = field(default_factory=Mix)
    give_up_s: float = 90.0
    topo: Topology = field(default_factory=Topology)
    acked: list[Submission] = field(default_factory=list)
    unacked: list[str] = field(default_factory=list)  # never acknowledged: not accepted, not counted
    kinds: dict[str, str] = field(default_factory=dict)

    async def submit(self, kind: str, sleep_s: float, nodes: int) -> None:
        request_id = f"chaos-{uuid.uuid4().hex[:16]}"
        name = f"{kind}-{request_id[-8:]}"
        body = json.dumps(job_request(self.root, name, sleep_s, nodes, self.topic)).encode()
        js = self.nc.jetstream(timeout=5)
        deadline = time.monotonic() + self.give_up_s
        while True:
            try:
                await js.publish(self.topo.jobs_submit, body, headers={"Nats-Msg-Id": request_id})
                break
            except Exception:  # no server, fail-over, full disk: the same id again, later
                if time.monotonic() > deadline:
                    self.unacked.append(request_id)
                    return
                await asyncio.sleep(0.5)
        self.kinds[request_id] = kind
        self.acked.append(Submission(request_id, kind, time.time()))

    async def run(self, jobs: int, interval_s: float) -> None:
        """Submit ``jobs`` jobs, one every ``interval_s`` (each in its own task: a stalled publish
        does not stall the steady rate)."""
        tasks = []
        for _ in range(jobs):
            kind, sleep_s, nodes = self.mix.pick(self.rng)
            tasks.append(asyncio.create_task(self.submit(kind, sleep_s, nodes)))
            await asyncio.sleep(interval_s)
        await asyncio.gather(*tasks)
