"""What the scheduler's integration tests share: fake agents played by the test, a resource
catalog with pools of their own, and jobs written straight into the jobs bucket as the validator
leaves them (Pending, plus the work item), for the tests that run the scheduler without intake.

A fake agent speaks the agent protocol: it heartbeats on ``agent_heartbeat(id)``, pulls its
commands from ``agent_control(id)`` through its own durable consumer, and reports on
``agent_status(id)``.  ``serve()`` makes it answer by itself: every Assign is reported running,
and exited after ``run_s``; a Cancel ends the attempt's nodes with 143.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
import yaml
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError

from trainmaster.bus import ensure_consumer
from trainmaster.catalog import SHIPPED
from trainmaster.jobstore import cloud_event
from trainmaster.messages import (
    AgentCommand,
    AgentHeartbeat,
    Assign,
    Cancel,
    GpuInfo,
    JobRequest,
    NodeReport,
    Resources,
    Validated,
    WorkItem,
    encode,
)
from trainmaster.statemachine import new_record, transition
from trainmaster.topology import Topology

TOPO = Topology()
_decode_command = msgspec.json.Decoder(AgentCommand).decode

# pools of the test catalog: one per test, so tests sharing one scheduler never use each other's agents
TEST_POOLS = [f"t{i:02d}" for i in range(40)]
# a dedicated pool of the test catalog: only account team-q may use it
DEDICATED_POOL, DEDICATED_TO = "tdedicated", "team-q"
SMALL = {"name": "small", "cpus": 1, "memory_mb": 512, "price_per_hour": 0.01}
TEST_FLAVORS = [
    SMALL,
    {"name": "large", "cpus": 4, "memory_mb": 2048, "price_per_hour": 0.04},
    {"name": "h100", "cpus": 2, "memory_mb": 1024, "gpus": 1, "gpu_type": "H100", "price_per_hour": 1.0},
]


def write_test_catalog(folder: Path) -> Path:
    """The shipped catalogs, plus pools ``t00``..``t39`` (flavors small: 1 CPU, 512 MiB; large: 4 CPUs,
    2 GiB; h100: 2 CPUs, 1 GiB, 1 x H100) and ``tdedicated`` (the same flavors, for account team-q
    only).  Point ``TM_CATALOG_DIR`` at the folder returned."""
    folder.mkdir(parents=True, exist_ok=True)
    for shipped in SHIPPED.iterdir():
        if shipped.is_file():
            shutil.copy(shipped, folder / shipped.name)
    resources = yaml.safe_load((folder / "resources.yaml").read_text())
    resources["pools"] += [{"name": pool, "description": "test pool", "flavors": TEST_FLAVORS} for pool in TEST_POOLS]
    resources["pools"].append({"name": DEDICATED_POOL, "description": "dedicated test pool", "kind": "dedicated",
                               "accounts": [DEDICATED_TO], "flavors": TEST_FLAVORS})
    (folder / "resources.yaml").write_text(yaml.safe_dump(resources))
    return folder


class FakeAgent:
    def __init__(self, nc: NATS, pool: str, *, cpus: int = 4, memory_mb: int = 8192,
                 gpus: tuple[str, ...] = (), agent_id: str | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.agent_id = agent_id or f"fake-{uuid.uuid4().hex[:8]}"
        self.pool = pool
        self.cpus, self.memory_mb = cpus, memory_mb
        self.gpus = [GpuInfo(index=i, model=model, memory_mb=81920) for i, model in enumerate(gpus)]
        self.started_at = time.time()
        self.tasks: list[asyncio.Task] = []
        self._sub = None
        # while serving: what runs here now, and every Assign ever received
        self.running: dict[tuple[str, int, int], Assign] = {}
        self.assigns: list[Assign] = []
        self.cancels: list[Cancel] = []

    def heartbeat(self) -> AgentHeartbeat:
        return AgentHeartbeat(agent_id=self.agent_id, host=f"host-{self.agent_id}", pool=self.pool, labels={},
                              cpus=self.cpus, memory_mb=self.memory_mb, gpus=self.gpus,
                              running=sorted(f"{j}/{n}/{a}" for j, a, n in self.running),
                              sent_at=time.time(), started_at=self.started_at)

    async def start_heartbeats(self, interval_s: float = 0.5) -> None:
        async def beat() -> None:
            while True:
                await self.nc.publish(TOPO.agent_heartbeat(self.agent_id), encode(self.heartbeat()))
                await asyncio.sleep(interval_s)

        self.tasks.append(asyncio.create_task(beat()))

    async def stop(self) -> None:
        """Go silent: no more heartbeats, no more answers (what a dead host looks like)."""
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()

    async def command(self, timeout_s: float = 15.0) -> Assign | Cancel:
        """The next command for this agent, acknowledged (as the real agent does)."""
        if self._sub is None:
            spec = TOPO.consumer_agent(self.agent_id)
            await ensure_consumer(self.js, spec)
            self._sub = await self.js.pull_subscribe_bind(spec.durable, stream=spec.stream)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                [msg] = await self._sub.fetch(1, timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            except (TimeoutError, NatsTimeoutError):
                continue
            await msg.ack()
            assert msg.subject == TOPO.agent_control(self.agent_id)
            return _decode_command(msg.data)
        raise AssertionError(f"no command for {self.agent_id} within {timeout_s}s")

    async def report(self, job_id: str, attempt: int, state: str, exit_code: int | None = None,
                     reason: str | None = None, node: int = 0) -> None:
        report = NodeReport(agent_id=self.agent_id, job_id=job_id, attempt=attempt, node=node, state=state,
                            exit_code=exit_code, reason=reason)
        await self.js.publish(TOPO.agent_status(self.agent_id), encode(report), stream=TOPO.stream_agent.name,
                              headers={"Nats-Msg-Id": f"{job_id}.a{attempt}.n{node}.{state}"})

    async def serve(self, run_s: float | Callable[[Assign], float] = 0.5,
                    on_assign: Callable[[FakeAgent, Assign], None] | None = None) -> None:
        """Answer commands by itself (heartbeats too)."""
        await self.start_heartbeats()

        async def finish(cmd: Assign, after_s: float) -> None:
            await asyncio.sleep(after_s)
            key = (cmd.job_id, cmd.attempt, cmd.node)
            if self.running.pop(key, None) is not None:
                await self.report(cmd.job_id, cmd.attempt, "exited", exit_code=0, node=cmd.node)

        async def loop() -> None:
            while True:
                try:
                    command = await self.command(timeout_s=3600)
                except AssertionError:
                    continue
                if isinstance(command, Assign):
                    key = (command.job_id, command.attempt, command.node)
                    if key in self.running or any((a.job_id, a.attempt, a.node) == key for a in self.assigns):
                        continue  # a re-sent assignment: already handled
                    self.assigns.append(command)
                    self.running[key] = command
                    if on_assign:
                        on_assign(self, command)
                    await self.report(command.job_id, command.attempt, "running", node=command.node)
                    after = run_s(command) if callable(run_s) else run_s
                    self.tasks.append(asyncio.create_task(finish(command, after)))
                else:
                    self.cancels.append(command)
                    for key in [k for k in self.running if k[0] == command.job_id
                                and (command.attempt is None or k[1] <= command.attempt)]:
                        self.running.pop(key)
                        await self.report(key[0], key[1], "exited", exit_code=143, node=key[2])

        self.tasks.append(asyncio.create_task(loop()))


async def pending_job(nc: NATS, pool: str, *, name: str = "sched", node_count: int = 1, flavor: str | None = None,
                      spec: JobRequest | None = None, **spec_fields) -> str:
    """A job as the validator leaves it: a Pending record in the jobs bucket, its two events
    (submitted, pending) and its work item.  No intake, no validator: the scheduler cannot tell the
    difference, and its tests do not depend on the validator's rules."""
    job_id = f"job-{uuid.uuid4().hex[:16]}"
    resources = Resources(pool=pool, node_count=node_count, flavor=flavor)
    spec = msgspec.structs.replace(spec, resources=resources) if spec else JobRequest(
        name=name, resources=resources, **spec_fields)
    now = time.time()
    record = new_record(job_id=job_id, name=spec.name or name, version="V001", spec=spec, request_id=job_id, now=now)
    record = transition(record, Validated("verdict"), now)
    js = nc.jetstream()
    kv = await js.key_value(TOPO.bucket_jobs.name)
    await kv.create(job_id, encode(record))
    for entry in record.history:
        event = cloud_event(record, entry, "test")
        await js.publish(TOPO.job_events(job_id), encode(event), stream=TOPO.stream_events.name,
                         headers={"Nats-Msg-Id": event.id})
    await js.publish(TOPO.work_schedule, encode(WorkItem(job_id)), stream=TOPO.stream_work.name,
                     headers={"Nats-Msg-Id": f"{job_id}.schedule"})
    return job_id


async def record_of(nc: NATS, job_id: str) -> dict:
    kv = await nc.jetstream().key_value(TOPO.bucket_jobs.name)
    entry = await kv.get(job_id)
    return msgspec.json.decode(entry.value)
