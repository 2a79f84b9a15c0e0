"""The scheduler as a real process (with job-intake and the validator) and fake agents played by
the test (``scheduler_fixtures.FakeAgent``): heartbeats on ``agent_heartbeat(id)``, commands pulled
from ``agent_control(id)`` through the agent's own durable consumer, reports on ``agent_status(id)``.

Each test uses its own resource pool of the test catalog (``t00``, ``t01``, ...) and its own
agents, so the tests share one stack and never place on each other's agents.  The stack runs with
``TM_AGENT_TIMEOUT_S=2``: an agent silent for 2 s is lost."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from scheduler_fixtures import DEDICATED_POOL, DEDICATED_TO, TEST_POOLS, FakeAgent, pending_job, write_test_catalog
from support import ServiceProcess, Services, assert_error, eventually, iris_job, read_stream, request_json

from services.scheduler.loop import TICK_S  # the placement loop runs at least this often
from trainmaster.bus import ERROR_HEADER
from trainmaster.messages import Assign, Cancel, JobRequest, NodeReport, encode
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration

TOPO = Topology()
AGENT_TIMEOUT_S = 2.0
_pools = iter(TEST_POOLS)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def stack(module_nats_server: str, module_services: Services,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, ServiceProcess]:
    catalog = write_test_catalog(tmp_path_factory.mktemp("catalog"))
    env = {"TM_CATALOG_DIR": str(catalog), "TM_AGENT_TIMEOUT_S": str(AGENT_TIMEOUT_S)}
    started = module_services.start(module_nats_server, "job_intake", "validator", "scheduler", env=env)
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
async def pool() -> str:
    return next(_pools)


@pytest.fixture
async def agent(client: NATS, pool: str) -> AsyncIterator[FakeAgent]:
    fake = FakeAgent(client, pool=pool)
    yield fake
    await fake.stop()


@pytest.fixture
async def agents(client: NATS, pool: str) -> AsyncIterator[list[FakeAgent]]:
    """Two more agents of the test's pool, each with room for one node of flavor small."""
    fakes = [FakeAgent(client, pool=pool, cpus=1, memory_mb=1024) for _ in range(2)]
    yield fakes
    for fake in fakes:
        await fake.stop()


_names = itertools.count()


async def create(nc: NATS, work: Path, pool: str, name: str | None = None, *, node_count: int = 1,
                 flavor: str | None = None, **fields) -> dict:
    """A valid job (the sample's spec), Pending as the validator leaves it; read back through intake
    (the scheduler may have moved it on already)."""
    name = name or f"sched-{next(_names)}"
    spec = msgspec.convert({**iris_job(work, name), **fields}, JobRequest)
    job_id = await pending_job(nc, pool, spec=spec, node_count=node_count, flavor=flavor)
    return await get(nc, job_id)


async def get(nc: NATS, job_id: str) -> dict:
    return await request_json(nc, TOPO.jobs("get"), {"id": job_id})


async def status_becomes(nc: NATS, job_id: str, status: str, timeout_s: float = 15.0) -> dict:
    async def check() -> dict | None:
        record = await get(nc, job_id)
        return record if record["status"] == status else None

    return await eventually(check, timeout_s, what=f"job {job_id} to be {status}")


def ending(record: dict) -> dict:
    """The history entry that ended the job (later entries, e.g. billing, leave the status as is)."""
    return next(e for e in record["history"] if e["status"] in ("Succeeded", "Failed", "Stopped"))


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
    assert ending(record)["reason"] == "enough"


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


async def test_the_scheduler_believes_an_agent_only_about_itself(
    client: NATS, agent: FakeAgent, work: Path, stack: dict[str, ServiceProcess]
) -> None:
    job, command = await placed(agent, client, work)
    before = await status_becomes(client, job["id"], "Scheduled")
    other = FakeAgent(client, pool=agent.pool)  # never heartbeats: nothing is placed on it
    # a report of a node placed on another agent, and one published as another agent
    await other.report(job["id"], command.attempt, "running")
    forged = NodeReport(agent_id=agent.agent_id, job_id=job["id"], attempt=command.attempt, node=0, state="exited",
                        exit_code=1, reason="forged")
    await client.jetstream().publish(TOPO.agent_status(other.agent_id), encode(forged), stream=TOPO.stream_agent.name)
    # a heartbeat speaking for an agent that is not its publisher
    ghost = msgspec.structs.replace(other.heartbeat(), agent_id=f"ghost-{other.agent_id}")
    await client.publish(TOPO.agent_heartbeat(other.agent_id), encode(ghost))

    await consumed(client, TOPO.consumer_scheduler_status.stream, TOPO.consumer_scheduler_status.durable)
    refused = await eventually(lambda: [e for e in stack["scheduler"].log_events()
                                        if e.get("event") in ("report refused", "heartbeat refused")
                                        and other.agent_id in e.get("why", "")], what="the refusals logged")
    assert sorted(e["why"] for e in refused) == sorted([
        f"node 0 of job {job['id']} attempt 1 is placed on agent {agent.agent_id}, not on {other.agent_id}",
        f"published on {TOPO.agent_status(other.agent_id)}, but speaks for agent {agent.agent_id} "
        f"(who publishes on {TOPO.agent_status(agent.agent_id)})",
        f"published on {TOPO.agent_heartbeat(other.agent_id)}, but speaks for agent {ghost.agent_id} "
        f"(who publishes on {TOPO.agent_heartbeat(ghost.agent_id)})",
    ])
    after = await get(client, job["id"])
    assert (after["status"], after["history"]) == ("Scheduled", before["history"]), "a refused report writes nothing"
    listed = await request_json(client, TOPO.agents_list, b"{}")
    assert ghost.agent_id not in [a["agent_id"] for a in listed["agents"]]
    # the refused attempts are on the audit trail, as the agent that made them
    async def refused_of_other() -> list[dict]:
        trail = await client.jetstream().subscribe(TOPO.audit("*", "*"), ordered_consumer=True)
        entries = []
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            while True:
                entries.append(json.loads((await trail.next_msg(timeout=1)).data))
        await trail.unsubscribe()
        mine = [e for e in entries if e["actor"] == f"agent/{other.agent_id}"]
        return mine if len(mine) >= 3 else []

    entries = await eventually(refused_of_other, what="the refusals on the audit trail")
    assert sorted((e["actor"], e["action"], e["outcome"]) for e in entries) == [
        (f"agent/{other.agent_id}", "agent_heartbeat", "refused"),
        (f"agent/{other.agent_id}", "agent_report", "refused"),
        (f"agent/{other.agent_id}", "agent_report", "refused"),
    ]

    await agent.report(job["id"], command.attempt, "exited", exit_code=0)
    await status_becomes(client, job["id"], "Succeeded")


# ------------------------------------------------------------------------------ flavors, GPUs, never fits
async def test_a_job_that_can_never_fit_fails_with_the_reason(client: NATS, agent: FakeAgent, work: Path) -> None:
    await agent.start_heartbeats()  # 4 CPUs, 8 GiB, no GPU
    await eventually(lambda: request_json(client, TOPO.agents_list, b"{}"), what="agents list")
    cases = [
        ({"node_count": 2, "flavor": "large"}, f"pool '{agent.pool}' can hold at most 1 nodes of flavor large"),
        ({"flavor": "h100"}, f"no agent of pool '{agent.pool}' has H100 GPU"),
        ({"flavor": "huge"}, f"pool '{agent.pool}' has no flavor 'huge'"),
    ]
    jobs = [(await create(client, work, agent.pool, **kw), why) for kw, why in cases]
    jobs.append(({"id": await pending_job(client, "nowhere")}, "no resource pool 'nowhere'"))
    for job, why in jobs:
        record = await status_becomes(client, job["id"], "Failed")
        assert why in record["failure_reason"], record["failure_reason"]
    # a job that fits the same agent still runs
    fits = await create(client, work, agent.pool, flavor="large")
    command = await agent.command()
    assert isinstance(command, Assign) and command.job_id == fits["id"]


async def test_a_job_for_a_pool_dedicated_to_other_accounts_fails_with_the_reason(client: NATS, work: Path) -> None:
    """The validator refuses such a job; one that reached the queue all the same (the catalog
    changed after its validation) is never placed there."""
    outsider = FakeAgent(client, DEDICATED_POOL)
    try:
        await outsider.start_heartbeats()
        job = await create(client, work, DEDICATED_POOL)  # account default
        record = await status_becomes(client, job["id"], "Failed")
        assert record["failure_reason"] == (
            f"pool '{DEDICATED_POOL}' is dedicated to {DEDICATED_TO}; account default may not use it")
        member = await create(client, work, DEDICATED_POOL, account=DEDICATED_TO)
        command = await outsider.command()
        assert isinstance(command, Assign) and command.job_id == member["id"]
    finally:
        await outsider.stop()


async def test_a_job_over_its_accounts_quota_waits_with_the_reason_until_the_first_ends(
    client: NATS, agent: FakeAgent, work: Path
) -> None:
    account = f"quota-{next(_names)}-{agent.agent_id}"
    await request_json(client, TOPO.accounts("credit"), {"name": account, "amount": 10})
    quota = await request_json(client, TOPO.accounts("quota"), {"name": account, "jobs": 1})
    assert quota["quota"] == {"jobs": 1}, quota
    # the agent has room for four jobs; the account's first runs long enough to see the second wait
    await agent.serve(run_s=lambda cmd: 8.0 if cmd.name.startswith("first-") else 0.5)
    first = await create(client, work, agent.pool, f"first-{next(_names)}", account=account)
    await status_becomes(client, first["id"], "Running")
    second = await create(client, work, agent.pool, account=account)
    other = await create(client, work, agent.pool)  # account default: not held behind the quota
    await status_becomes(client, other["id"], "Succeeded")

    async def told() -> dict | None:
        record = await get(client, second["id"])
        assert record["status"] == "Pending", "over the quota: it waits, it does not fail"
        return record if record.get("pending_reason") else None

    waiting = await eventually(told, 6, what="the second job's reason to wait")
    assert waiting["pending_reason"] == f"held by the quota of account {account}: at most 1 job at once"
    assert [h["status"] for h in waiting["history"]] == ["Initializing", "Pending"], "a reason is no state change"
    assert (await get(client, first["id"]))["status"] == "Running"

    ran = await status_becomes(client, second["id"], "Succeeded", timeout_s=20)
    assert ran["pending_reason"] is None, "placed: it waits no more"
    first_ended = next(h["at"] for h in (await get(client, first["id"]))["history"] if h["status"] == "Succeeded")
    placed_at = next(h["at"] for h in ran["history"] if h["status"] == "Scheduled")
    assert placed_at >= first_ended, "the second started only once the first had ended"
    events = await read_stream(client, TOPO.job_events(second["id"]),
                               until=lambda e: e["data"]["status"] == "Succeeded")
    assert [e["type"] for _, e in events] == [
        "tm.job.submitted", "tm.job.pending", "tm.job.scheduled", "tm.job.running", "tm.job.succeeded"]


async def test_a_gpu_flavor_goes_to_an_agent_with_that_gpu_model(client: NATS, pool: str, work: Path) -> None:
    t4 = FakeAgent(client, pool, cpus=8, memory_mb=16384, gpus=("Tesla T4",))
    h100 = FakeAgent(client, pool, cpus=8, memory_mb=16384, gpus=("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"))
    try:
        for fake in (t4, h100):
            await fake.start_heartbeats()
        job = await create(client, work, pool, flavor="h100")
        command = await h100.command()
        assert isinstance(command, Assign) and command.job_id == job["id"]
        record = await status_becomes(client, job["id"], "Scheduled")
        assert record["placements"][0]["agent_id"] == h100.agent_id
    finally:
        await t4.stop()
        await h100.stop()


# ------------------------------------------------------------------------------ gangs and stop
async def test_stopping_a_two_node_job_reaches_both_agents(
    client: NATS, agents: list[FakeAgent], work: Path
) -> None:
    for fake in agents:
        await fake.start_heartbeats()
    job = await create(client, work, agents[0].pool, node_count=2)  # one node per agent: they hold one each
    assigns = [await fake.command() for fake in agents]
    assert sorted(a.node for a in assigns) == [0, 1] and {a.job_id for a in assigns} == {job["id"]}
    for fake, assign in zip(agents, assigns, strict=True):
        await fake.report(job["id"], 1, "running", node=assign.node)
    await status_becomes(client, job["id"], "Running")

    reply = await request_json(client, TOPO.jobs("stop"), {"id": job["id"], "reason": "enough"})
    assert reply["status"] == "Stopping"
    cancels = [await fake.command() for fake in agents]
    assert all(isinstance(c, Cancel) and c.job_id == job["id"] and c.attempt == 1 for c in cancels), cancels
    for fake, assign in zip(agents, assigns, strict=True):
        await fake.report(job["id"], 1, "exited", exit_code=143, reason="stopped: enough", node=assign.node)
    record = await status_becomes(client, job["id"], "Stopped")
    assert ending(record)["reason"] == "enough"


# ------------------------------------------------------------------------------ retries, lost agents, timeouts
async def test_a_lost_agent_restarts_the_job_elsewhere_and_its_late_report_is_ignored(
    client: NATS, agents: list[FakeAgent], work: Path
) -> None:
    first, second = agents
    await first.start_heartbeats()
    job = await create(client, work, first.pool, retry={"max_retries": 1})
    assign = await first.command()
    assert isinstance(assign, Assign) and assign.attempt == 1
    await first.report(job["id"], 1, "running")
    await status_becomes(client, job["id"], "Running")

    await second.start_heartbeats()
    await first.stop()  # the host dies: silent from now on
    retry = await second.command(timeout_s=AGENT_TIMEOUT_S + TICK_S + 10)
    assert isinstance(retry, Assign) and (retry.job_id, retry.attempt) == (job["id"], 2)
    record = await get(client, job["id"])
    lost = next(e for e in record["history"] if e["change"] == "agent_lost")
    assert lost["status"] == "Pending"
    assert lost["reason"] == f"agent {first.agent_id} lost (node 0); retrying (retry 1 of 1)"
    listed = await request_json(client, TOPO.agents_list, b"{}")
    assert first.agent_id in listed["lost"]
    # the lost agent is told to stop attempt 1 (it reads it if it comes back)
    cancel = await first.command()
    assert isinstance(cancel, Cancel) and (cancel.job_id, cancel.attempt) == (job["id"], 1)

    # attempt 1 reports late (the host was only cut off): ignored
    await first.report(job["id"], 1, "exited", exit_code=0)
    await second.report(job["id"], 2, "running")
    await status_becomes(client, job["id"], "Running")
    await consumed(client, TOPO.consumer_scheduler_status.stream, TOPO.consumer_scheduler_status.durable)
    await second.report(job["id"], 2, "exited", exit_code=0)
    record = await status_becomes(client, job["id"], "Succeeded")
    assert record["attempt"] == 2 and record["placements"][0]["agent_id"] == second.agent_id
    assert [e["status"] for e in record["history"][:ending(record)["seq"] + 1]] == [
        "Initializing", "Pending", "Scheduled", "Running", "Pending", "Scheduled", "Running", "Succeeded"]


async def test_a_lost_agent_without_retries_fails_the_job(client: NATS, agent: FakeAgent, work: Path) -> None:
    job, command = await placed(agent, client, work)
    await agent.report(job["id"], command.attempt, "running")
    await status_becomes(client, job["id"], "Running")
    await agent.stop()
    record = await status_becomes(client, job["id"], "Failed", timeout_s=AGENT_TIMEOUT_S + TICK_S + 10)
    assert record["failure_reason"] == f"agent {agent.agent_id} lost (node 0)"


async def test_retryable_exit_codes_retry_until_the_retries_are_used_up(
    client: NATS, agent: FakeAgent, work: Path
) -> None:
    await agent.start_heartbeats()
    job = await create(client, work, agent.pool, retry={"max_retries": 1, "retry_exit_codes": [137]})
    for attempt in (1, 2):
        assign = await agent.command()
        assert isinstance(assign, Assign) and (assign.job_id, assign.attempt) == (job["id"], attempt)
        await agent.report(job["id"], attempt, "running")
        await agent.report(job["id"], attempt, "exited", exit_code=137, reason="killed: out of memory")
    record = await status_becomes(client, job["id"], "Failed")
    assert record["failure_reason"] == "killed: out of memory; no retries left (2 attempts)"
    assert record["exit_code"] == 137 and record["attempt"] == 2

    # a code outside the retryable class fails at once, retries or not
    other = await create(client, work, agent.pool, retry={"max_retries": 3})
    assign = await agent.command()
    assert isinstance(assign, Assign) and assign.job_id == other["id"]
    await agent.report(other["id"], 1, "exited", exit_code=127, reason="command not found")
    record = await status_becomes(client, other["id"], "Failed")
    assert (record["attempt"], record["failure_reason"]) == (1, "command not found")


async def test_a_job_past_its_max_run_time_is_cancelled_and_fails(client: NATS, agent: FakeAgent, work: Path) -> None:
    await agent.start_heartbeats()
    job = await create(client, work, agent.pool, max_run_time_s=1.0, retry={"max_retries": 2})
    assign = await agent.command()
    assert isinstance(assign, Assign)
    await agent.report(job["id"], 1, "running")
    await status_becomes(client, job["id"], "Running")
    cancel = await agent.command(timeout_s=1.0 + TICK_S + 10)
    assert isinstance(cancel, Cancel) and (cancel.job_id, cancel.attempt) == (job["id"], 1)
    record = await get(client, job["id"])
    assert record["status"] == "Stopping"
    await agent.report(job["id"], 1, "exited", exit_code=143, reason="stopped: timed out")
    record = await status_becomes(client, job["id"], "Failed")
    assert record["failure_reason"] == "timed out: ran longer than max_run_time_s (1 s)"
    assert record["attempt"] == 1, "a timeout is not retried"
    events = await read_stream(client, TOPO.job_events(job["id"]), until=lambda e: e["data"]["status"] == "Failed")
    assert [e["type"] for _, e in events][-2:] == ["tm.job.stopping", "tm.job.failed"]
