"""The scheduler as a real process (with job-intake and the validator) and a fake agent played by
the test: it heartbeats on ``agent_heartbeat(id)``, pulls its commands from ``agent_control(id)``
through its own durable consumer, and reports on ``agent_status(id)``.

Each test uses its own resource pool and agent id, so the tests share one stack and never place
on each other's agents."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from support import ServiceProcess, Services, assert_error, eventually, iris_job, read_stream, request_json

from services.scheduler.app import TICK_S  # the placement loop runs at least this often
from trainmaster.bus import ERROR_HEADER, ensure_consumer
from trainmaster.messages import AgentCommand, AgentHeartbeat, Assign, Cancel, NodeReport, encode
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration

TOPO = Topology()
_decode_command = msgspec.json.Decoder(AgentCommand).decode


class FakeAgent:
    def __init__(self, nc: NATS, pool: str) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.agent_id = f"fake-{uuid.uuid4().hex[:8]}"
        self.pool = pool
        self.started_at = time.time()
        self._beating: asyncio.Task | None = None
        self._sub = None

    def heartbeat(self) -> AgentHeartbeat:
        return AgentHeartbeat(agent_id=self.agent_id, host=f"host-{self.agent_id}", pool=self.pool, labels={},
                              cpus=4, memory_mb=8192, gpus=[], running=[], sent_at=time.time(),
                              started_at=self.started_at)

    async def start_heartbeats(self, interval_s: float = 0.5) -> None:
        async def beat() -> None:
            while True:
                await self.nc.publish(TOPO.agent_heartbeat(self.agent_id), encode(self.heartbeat()))
                await asyncio.sleep(interval_s)

        self._beating = asyncio.create_task(beat())

    async def stop(self) -> None:
        if self._beating:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating

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


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def stack(module_nats_server: str, module_services: Services) -> dict[str, ServiceProcess]:
    started = module_services.start(module_nats_server, "job_intake", "validator", "scheduler")
    return {svc.module: svc for svc in started}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scheduler")


@pytest.fixture
async def client(module_nats_server: str, stack: dict[str, ServiceProcess]) -> AsyncIterator[NATS]:
    nc = await nats.connect(module_nats_server, connect_timeout=5)
    yield nc
    await nc.close()


@pytest.fixture
async def agent(client: NATS) -> AsyncIterator[FakeAgent]:
    fake = FakeAgent(client, pool=f"pool-{uuid.uuid4().hex[:6]}")
    yield fake
    await fake.stop()


async def create(nc: NATS, work: Path, pool: str, name: str | None = None) -> dict:
    spec = iris_job(work, name or f"sched-{uuid.uuid4().hex[:6]}", resources={"pool": pool, "node_count": 1})
    job = await request_json(nc, TOPO.jobs("create"), spec)
    assert job.get("status") == "Pending", job
    return job


async def get(nc: NATS, job_id: str) -> dict:
    return await request_json(nc, TOPO.jobs("get"), {"id": job_id})


async def status_becomes(nc: NATS, job_id: str, status: str, timeout_s: float = 15.0) -> dict:
    async def check() -> dict | None:
        record = await get(nc, job_id)
        return record if record["status"] == status else None

    return await eventually(check, timeout_s, what=f"job {job_id} to be {status}")


async def consumed(nc: NATS, stream: str, durable: str) -> None:
    """Wait until the consumer handled everything it was given (nothing pending, nothing unacked)."""
    async def check() -> bool:
        info = await nc.jetstream().consumer_info(stream, durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(check, 15, what=f"{durable} to catch up")


async def placed(agent: FakeAgent, client: NATS, work: Path) -> tuple[dict, Assign]:
    """A job of the agent's pool, placed on the agent: its Assign received."""
    await agent.start_heartbeats()
    job = await create(client, work, agent.pool)
    command = await agent.command()
    assert isinstance(command, Assign), command
    return job, command


# ------------------------------------------------------------------------------ tests
async def test_without_an_agent_the_job_waits_then_runs_to_success(
    client: NATS, agent: FakeAgent, work: Path
) -> None:
    job = await create(client, work, agent.pool)
    await consumed(client, TOPO.consumer_scheduler_queue.stream, TOPO.consumer_scheduler_queue.durable)
    await asyncio.sleep(TICK_S + 0.5)  # at least one more pass of the placement loop
    assert (await get(client, job["id"]))["status"] == "Pending", "no agent of the pool: it waits"

    await agent.start_heartbeats()
    command = await agent.command()
    assert isinstance(command, Assign)
    assert (command.job_id, command.attempt, command.node, command.node_count) == (job["id"], 1, 0, 1)
    assert (command.name, command.version) == (job["name"], "V001")
    assert command.spec.resources.pool == agent.pool
    record = await status_becomes(client, job["id"], "Scheduled")
    assert record["placements"] == [{"node": 0, "agent_id": agent.agent_id, "host": f"host-{agent.agent_id}"}]
    agents = await request_json(client, TOPO.agents_list, b"{}")
    assert agent.agent_id in [a["agent_id"] for a in agents["agents"]]

    await agent.report(job["id"], 1, "running")
    await status_becomes(client, job["id"], "Running")
    await agent.report(job["id"], 1, "exited", exit_code=0)
    record = await status_becomes(client, job["id"], "Succeeded")
    assert record["exit_code"] == 0
    assert record["nodes"] == [{"node": 0, "agent_id": agent.agent_id, "state": "exited", "exit_code": 0}]

    events = await read_stream(client, TOPO.job_events(job["id"]), until=lambda e: e["data"]["status"] == "Succeeded")
    assert [e["type"] for _, e in events] == [
        "tm.job.submitted", "tm.job.pending", "tm.job.scheduled", "tm.job.running", "tm.job.succeeded"]
    # an ended job cannot be stopped
    assert_error(await request_json(client, TOPO.jobs("stop"), {"id": job["id"]}), "conflict")


async def test_a_non_zero_exit_fails_the_job_with_the_code(client: NATS, agent: FakeAgent, work: Path) -> None:
    job, command = await placed(agent, client, work)
    await agent.report(job["id"], command.attempt, "running")
    await agent.report(job["id"], command.attempt, "exited", exit_code=7, reason="ValueError: bad data")
    record = await status_becomes(client, job["id"], "Failed")
    assert record["exit_code"] == 7
    assert record["failure_reason"] == "ValueError: bad data"
    events = await read_stream(client, TOPO.job_events(job["id"]), until=lambda e: e["data"]["status"] == "Failed")
    last = events[-1][1]
    assert (last["type"], last["data"]["exit_code"]) == ("tm.job.failed", 7)


async def test_a_report_of_a_stale_attempt_is_ignored(client: NATS, agent: FakeAgent, work: Path) -> None:
    job, command = await placed(agent, client, work)
    await agent.report(job["id"], command.attempt, "running")
    before = await status_becomes(client, job["id"], "Running")

    for attempt in (command.attempt - 1, command.attempt + 1):
        await agent.report(job["id"], attempt, "exited", exit_code=1, reason="from another attempt")
    await consumed(client, TOPO.consumer_scheduler_status.stream, TOPO.consumer_scheduler_status.durable)
    after = await get(client, job["id"])
    assert after["status"] == "Running"
    assert after["history"] == before["history"], "a stale report writes nothing"

    await agent.report(job["id"], command.attempt, "exited", exit_code=0)
    await status_becomes(client, job["id"], "Succeeded")


async def test_stopping_a_running_job_cancels_it_on_its_agent(client: NATS, agent: FakeAgent, work: Path) -> None:
    job, command = await placed(agent, client, work)
    await agent.report(job["id"], command.attempt, "running")
    await status_becomes(client, job["id"], "Running")

    reply = await request_json(client, TOPO.jobs("stop"), {"id": job["id"], "reason": "enough"})
    assert reply["status"] == "Stopping"
    cancel = await agent.command()
    assert isinstance(cancel, Cancel)
    assert (cancel.job_id, cancel.reason) == (job["id"], "enough")

    await agent.report(job["id"], command.attempt, "exited", exit_code=143, reason="stopped: enough")
    record = await status_becomes(client, job["id"], "Stopped")
    assert record["history"][-1]["reason"] == "enough"


async def test_bad_reports_and_heartbeats_do_not_stop_the_scheduler(
    client: NATS, agent: FakeAgent, work: Path, stack: dict[str, ServiceProcess]
) -> None:
    status = TOPO.consumer_scheduler_status
    await client.publish(TOPO.agent_heartbeat(agent.agent_id), b"\x00 not a heartbeat")
    undecodable = [b"{not json", b'{"agent_id": "\xff\xfe", "job_id": "x"}', b'{"job_id": 5}']
    for body in undecodable:
        await client.jetstream().publish(TOPO.agent_status(agent.agent_id), body, stream=status.stream)
    await agent.report("job-that-never-was", 1, "exited", exit_code=0)
    # an undecodable report is dead-lettered at once (not retried for minutes first)
    sub = await client.jetstream().subscribe(TOPO.dlq(status.durable), ordered_consumer=True)
    letters = [await sub.next_msg(timeout=5) for _ in undecodable]
    await sub.unsubscribe()
    assert sorted(letter.data for letter in letters) == sorted(undecodable)
    assert all(letter.headers[ERROR_HEADER].startswith("poison") for letter in letters)

    assert stack["scheduler"].alive()
    job, command = await placed(agent, client, work)  # and it still places and applies reports
    await agent.report(job["id"], command.attempt, "exited", exit_code=0)
    await status_becomes(client, job["id"], "Succeeded")
