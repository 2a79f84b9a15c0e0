"""Two scheduler replicas at once, as real processes against one nats-server, with fake agents that
answer by themselves (``FakeAgent.serve``): no job is placed twice, no agent ever holds more than
it offers, and when the leader dies the other replica takes over.

Jobs are written as the validator leaves them (``pending_job``); no intake, no validator."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from scheduler_fixtures import FakeAgent, pending_job, record_of, write_test_catalog
from support import ServiceProcess, Services, eventually, spawn, wait_ready

from services.scheduler.lease import LEADER_KEY, LeaseRecord
from trainmaster.messages import Assign
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration

TOPO = Topology()
POOL = "t00"
LEASE_S = 1.5
SLOTS_PER_AGENT = 2  # agents of 2 CPUs; flavor small takes 1


@pytest.fixture
async def nc(nats_server: str) -> AsyncIterator[NATS]:
    from trainmaster.bus import provision

    client = await nats.connect(nats_server, connect_timeout=5)
    await provision(client.jetstream(), TOPO)
    yield client
    await client.close()


@pytest.fixture
async def replicas(nats_server: str, nc: NATS, services: Services, tmp_path: Path) -> list[ServiceProcess]:
    catalog = write_test_catalog(tmp_path / "catalog")
    env = {"TM_CATALOG_DIR": str(catalog), "TM_SCHEDULER_LEASE_S": str(LEASE_S), "TM_AGENT_TIMEOUT_S": "30"}
    started = [spawn("scheduler", nats_server, services.data_dir, env=env, label=f"scheduler-{name}")
               for name in ("a", "b")]
    services.started += started
    await wait_ready(started, nats_server, TOPO)
    return started


@pytest.fixture
async def fleet(nc: NATS) -> AsyncIterator[list[FakeAgent]]:
    """Four agents with room for two nodes each, that check on every Assign that they are not
    over-committed (a violation is recorded in ``overcommits``)."""
    agents = [FakeAgent(nc, POOL, cpus=SLOTS_PER_AGENT, memory_mb=4096) for _ in range(4)]
    for agent in agents:
        agent.overcommits = []  # type: ignore[attr-defined]

        def check(fake: FakeAgent, cmd: Assign) -> None:
            if len(fake.running) > SLOTS_PER_AGENT:
                fake.overcommits.append(sorted(fake.running))  # type: ignore[attr-defined]

        await agent.serve(run_s=lambda _: random.uniform(0.1, 0.4), on_assign=check)
    yield agents
    for agent in agents:
        await agent.stop()


async def leader_of(nc: NATS, replicas: list[ServiceProcess]) -> ServiceProcess:
    kv = await nc.jetstream().key_value(TOPO.bucket_scheduler.name)

    async def holder() -> ServiceProcess | None:
        try:
            lease = msgspec.json.decode((await kv.get(LEADER_KEY)).value, type=LeaseRecord)
        except Exception:
            return None
        return next((r for r in replicas if f"-{r.pid}-" in lease.holder and r.alive()), None)

    return await eventually(holder, 10, what="a live leader")


async def all_succeed(nc: NATS, job_ids: list[str], timeout_s: float = 25.0) -> list[dict]:
    async def check() -> list[dict] | None:
        records = [await record_of(nc, job_id) for job_id in job_ids]
        return records if all(r["status"] == "Succeeded" for r in records) else None

    return await eventually(check, timeout_s, interval_s=0.25, what="every job to succeed")


# A replica killed mid-batch leaves the agents' reports it had pulled unacknowledged: the stream
# gives them to the survivor once the consumer's ack wait has passed, so a takeover may take that long.
TAKEOVER_S = TOPO.consumer_scheduler_status.ack_wait_s + 15.0


def check_fleet(fleet: list[FakeAgent], records: list[dict]) -> None:
    assigned = Counter((a.job_id, a.attempt, a.node) for agent in fleet for a in agent.assigns)
    assert all(count == 1 for count in assigned.values()), "a node was assigned twice"
    assert all(r["attempt"] == 1 for r in records), "a job was placed twice"
    wanted = {(r["id"], 1, node) for r in records for node in range(r["spec"]["resources"]["node_count"])}
    assert set(assigned) == wanted
    assert [a.overcommits for a in fleet] == [[]] * len(fleet), "an agent held more than it offers"  # type: ignore[attr-defined]


async def test_two_replicas_never_place_a_job_twice_nor_overcommit_an_agent(
    nc: NATS, replicas: list[ServiceProcess], fleet: list[FakeAgent]
) -> None:
    # 40 jobs, some of them 2-node gangs, for 8 slots: most wait, and each replica sees every one
    job_ids = await asyncio.gather(*(pending_job(nc, POOL, name=f"r{i}", node_count=1 + (i % 5 == 0))
                                     for i in range(40)))
    records = await all_succeed(nc, list(job_ids))
    check_fleet(fleet, records)
    leader = await leader_of(nc, replicas)
    placers = [r for r in replicas if any(e.get("event") == "job placed" for e in r.log_events())]
    assert placers == [leader], "only the leader places"


async def test_when_the_leader_dies_the_other_replica_takes_over(
    nc: NATS, replicas: list[ServiceProcess], fleet: list[FakeAgent]
) -> None:
    before = await asyncio.gather(*(pending_job(nc, POOL, name=f"b{i}") for i in range(12)))
    await eventually(lambda: sum(len(a.assigns) for a in fleet) >= 4, 10, what="the first placements")
    leader = await leader_of(nc, replicas)
    os.kill(leader.pid, signal.SIGKILL)  # no clean hand-over: the lease must run out
    survivor = next(r for r in replicas if r is not leader)
    after = await asyncio.gather(*(pending_job(nc, POOL, name=f"a{i}") for i in range(12)))
    records = await all_succeed(nc, [*before, *after], TAKEOVER_S)
    check_fleet(fleet, records)
    assert await leader_of(nc, replicas) is survivor
    events = [e.get("event") for e in survivor.log_events()]
    assert "leader lease taken over from a silent leader" in events and "job placed" in events
