"""JobStore against a real nats-server: compare-and-set writes, idempotent changes and events
deduplicated by ``Nats-Msg-Id``, illegal transitions refused without a write."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS
from support import eventually, subject_count

from trainmaster.bus import make_broker
from trainmaster.jobstore import ApplyResult, JobStore, event_id
from trainmaster.messages import (
    JobRecord,
    JobRequest,
    NodeRunning,
    Placed,
    Placement,
    Rejected,
    Resources,
    Status,
    Validated,
    Violation,
)
from trainmaster.settings import Settings
from trainmaster.statemachine import IllegalTransition, new_record
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration

TOPO = Topology()


@pytest.fixture
async def connect(nc: NATS, nats_server: str) -> AsyncIterator[Callable[[str], asyncio.Future]]:
    """Open JobStores, each on its own broker connection (as separate services would)."""
    brokers: list[NatsBroker] = []

    async def open_store(source: str) -> JobStore:
        broker = make_broker(f"test-{source}", Settings(nats_url=nats_server))
        await broker.connect()
        brokers.append(broker)
        return await JobStore(broker, TOPO, source=source).open()

    yield open_store
    for broker in brokers:
        await broker.stop()


async def new_job(store: JobStore, node_count: int = 1) -> JobRecord:
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    spec = JobRequest(name="store-test", resources=Resources(node_count=node_count))
    record = new_record(job_id=job_id, name="store-test", version="V001", spec=spec,
                        request_id=f"req-{job_id}", now=1000.0)
    return await store.create(record)


async def events_of(nc: NATS, job_id: str) -> int:
    return await subject_count(nc, TOPO.stream_events.name, TOPO.job_events(job_id))


async def kv_revision(store: JobStore, job_id: str) -> int:
    return (await store.get(job_id))[1]


def race_on_first_read(store: JobStore, barrier: asyncio.Barrier) -> dict[str, int]:
    """Make ``store``'s first read wait for the other racer's first read: both then decide on the
    same revision, and one of the two compare-and-set writes must lose."""
    original = store.get
    calls = {"n": 0}

    async def get(job_id: str):
        result = await original(job_id)
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.wait_for(barrier.wait(), 10)
        return result

    store.get = get  # type: ignore[method-assign]
    return calls


async def test_conflicting_applies_exactly_one_wins(nc: NATS, connect) -> None:
    a, b = await connect("a"), await connect("b")
    record = await new_job(a)
    barrier = asyncio.Barrier(2)
    reads = [race_on_first_read(a, barrier), race_on_first_read(b, barrier)]

    validated = Validated(change_id="verdict-a")
    rejected = Rejected(change_id="verdict-b", violations=[Violation("name", "test", "rejected by b")])
    results = await asyncio.gather(a.apply(record.id, validated), b.apply(record.id, rejected),
                                   return_exceptions=True)

    assert sorted(r["n"] for r in reads) == [1, 2], "the loser's write failed its compare-and-set and re-read"
    winners = [r for r in results if isinstance(r, ApplyResult) and r.applied]
    losers = [r for r in results if isinstance(r, IllegalTransition)]
    assert len(winners) == 1 and len(losers) == 1, results
    final, _ = await a.get(record.id)
    # the loser saw the winner's state on its retry and was refused: nothing of it was written
    winner_change = winners[0].record.history[-1].change_id
    assert [h.change_id for h in final.history] == [f"submitted:{record.request_id}", winner_change]
    assert final == winners[0].record
    assert await events_of(nc, record.id) == 2


async def test_a_lost_race_is_applied_on_fresh_state_never_overwriting(nc: NATS, connect) -> None:
    a, b = await connect("a"), await connect("b")
    record = await new_job(a, node_count=2)
    await a.apply(record.id, Validated(change_id="verdict"))
    placements = [Placement(node=n, agent_id="agent-1", host="h") for n in (0, 1)]
    await a.apply(record.id, Placed(change_id="placed.1", attempt=1, placements=placements))

    barrier = asyncio.Barrier(2)
    reads = [race_on_first_read(a, barrier), race_on_first_read(b, barrier)]
    results = await asyncio.gather(
        a.apply(record.id, NodeRunning(change_id="a1.n0.running", attempt=1, node=0)),
        b.apply(record.id, NodeRunning(change_id="a1.n1.running", attempt=1, node=1)),
    )
    assert all(r.applied for r in results)
    assert sorted(r["n"] for r in reads) == [1, 2], "the loser's write failed its compare-and-set and re-read"
    final, _ = await a.get(record.id)
    assert final.status == Status.RUNNING
    assert [(n.node, n.state) for n in final.nodes] == [(0, "running"), (1, "running")], "no update was lost"
    assert [h.seq for h in final.history] == list(range(5))
    assert {h.change_id for h in final.history[-2:]} == {"a1.n0.running", "a1.n1.running"}
    assert await events_of(nc, record.id) == 5


async def test_many_concurrent_writers_lose_nothing(nc: NATS, connect) -> None:
    nodes = 8
    stores = [await connect(f"w{i}") for i in range(4)]
    record = await new_job(stores[0], node_count=nodes)
    await stores[0].apply(record.id, Validated(change_id="verdict"))
    placements = [Placement(node=n, agent_id=f"agent-{n}", host="h") for n in range(nodes)]
    await stores[0].apply(record.id, Placed(change_id="placed.1", attempt=1, placements=placements))

    results = await asyncio.gather(*(
        stores[n % len(stores)].apply(record.id, NodeRunning(change_id=f"a1.n{n}.running", attempt=1, node=n))
        for n in range(nodes)
    ))
    assert all(r.applied for r in results)
    final, _ = await stores[0].get(record.id)
    assert all(n.state == "running" for n in final.nodes)
    assert final.status == Status.RUNNING
    assert len(final.history) == 3 + nodes
    assert await events_of(nc, record.id) == 3 + nodes


async def test_the_same_change_twice_writes_and_publishes_once(nc: NATS, connect) -> None:
    store = await connect("once")
    record = await new_job(store)
    first = await store.apply(record.id, Validated(change_id="verdict"))
    revision = await kv_revision(store, record.id)
    second = await store.apply(record.id, Validated(change_id="verdict"))
    assert first.applied and not second.applied
    assert second.ignored_reason == "already applied"
    assert await kv_revision(store, record.id) == revision, "the repeat wrote nothing"
    final, _ = await store.get(record.id)
    assert [h.change_id for h in final.history].count("verdict") == 1
    # the repeat re-published its event under the same id; the server dropped it
    assert await events_of(nc, record.id) == 2
    entry = final.history[-1]
    await store.publish_event(final, entry)
    assert await events_of(nc, record.id) == 2
    # and a second store (another service) applying it again changes nothing either
    other = await connect("other")
    assert not (await other.apply(record.id, Validated(change_id="verdict"))).applied
    assert await events_of(nc, record.id) == 2

    sub = await nc.jetstream().subscribe(TOPO.job_events(record.id), ordered_consumer=True)
    ids = [(await sub.next_msg(timeout=5)).headers["Nats-Msg-Id"] for _ in range(2)]
    await sub.unsubscribe()
    assert ids == [event_id(record.id, 0), event_id(record.id, 1)]


async def test_create_twice_keeps_the_first_record_and_one_event(nc: NATS, connect) -> None:
    store = await connect("create")
    record = await new_job(store)
    again = await store.create(record)
    assert again == record
    assert await events_of(nc, record.id) == 1


async def test_an_illegal_transition_raises_and_writes_nothing(nc: NATS, connect) -> None:
    store = await connect("illegal")
    record = await new_job(store)
    await store.apply(record.id, Validated(change_id="verdict"))
    revision = await kv_revision(store, record.id)
    events = await events_of(nc, record.id)

    with pytest.raises(IllegalTransition):
        await store.apply(record.id, Rejected(change_id="late-verdict", violations=[]))
    with pytest.raises(IllegalTransition):  # placing must cover every node exactly once
        await store.apply(record.id, Placed(change_id="placed.1", attempt=1, placements=[]))

    assert await kv_revision(store, record.id) == revision
    assert await events_of(nc, record.id) == events
    final, _ = await store.get(record.id)
    assert final.status == Status.PENDING
    assert [h.change_id for h in final.history][-1] == "verdict"


async def test_a_stale_report_is_ignored_without_a_write(nc: NATS, connect) -> None:
    store = await connect("stale")
    record = await new_job(store)
    await store.apply(record.id, Validated(change_id="verdict"))
    await store.apply(record.id, Placed(change_id="placed.1", attempt=1,
                                        placements=[Placement(node=0, agent_id="a", host="h")]))
    revision = await kv_revision(store, record.id)
    result = await store.apply(record.id, NodeRunning(change_id="a7.n0.running", attempt=7, node=0))
    assert not result.applied and "attempt" in (result.ignored_reason or "")
    assert await kv_revision(store, record.id) == revision


async def test_events_stay_in_history_order_when_a_writer_publishes_late(nc: NATS, connect) -> None:
    """Writer A stores Pending but is slow to publish its event; writer B, seeing Pending in KV,
    places the job and publishes Scheduled.  A reader of the job's events must still get them in
    the order of the history (pending before scheduled), each once."""
    a, b = await connect("validator"), await connect("scheduler")
    record = await new_job(a)
    release = asyncio.Event()
    published = a.publish_event

    async def late_publish(rec: JobRecord, entry) -> None:
        await asyncio.wait_for(release.wait(), 10)
        await published(rec, entry)

    a.publish_event = late_publish  # type: ignore[method-assign]
    slow = asyncio.create_task(a.apply(record.id, Validated(change_id="verdict")))
    await eventually(lambda: _status_is(b, record.id, Status.PENDING), 5, 0.02, what="Pending in KV")
    await b.apply(record.id, Placed(change_id="placed.1", attempt=1,
                                    placements=[Placement(node=0, agent_id="a", host="h")]))
    release.set()
    await slow

    sub = await nc.jetstream().subscribe(TOPO.job_events(record.id), ordered_consumer=True)
    types = [json.loads((await sub.next_msg(timeout=5)).data)["type"] for _ in range(3)]
    await sub.unsubscribe()
    assert types == ["tm.job.submitted", "tm.job.pending", "tm.job.scheduled"]
    assert await events_of(nc, record.id) == 3


async def _status_is(store: JobStore, job_id: str, status: Status) -> bool:
    return (await store.get(job_id))[0].status == status
