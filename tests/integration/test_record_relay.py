"""A writer that dies between its compare-and-set and its publish, against a real nats-server.

The crash is reproduced at exactly that point: the record is written the way ``JobStore.apply``
writes it (``transition`` + compare-and-set) and the publish that would follow is left out.  The
first assertion of each test shows the loss is real (the stream lacks the event; nothing else
would publish it); the relay then publishes what is missing, once, in history order."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS
from support import eventually, read_stream, subject_count

from services.scheduler.relay import RecordRelay
from trainmaster.bus import make_broker
from trainmaster.jobstore import JobStore
from trainmaster.messages import (
    JobRecord,
    JobRequest,
    PlacementImpossible,
    Resources,
    Status,
    Validated,
    WorkItem,
    encode,
)
from trainmaster.settings import Settings
from trainmaster.statemachine import new_record, transition
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration

TOPO = Topology()


@pytest.fixture
async def store(nc: NATS, nats_server: str) -> AsyncIterator[JobStore]:
    broker: NatsBroker = make_broker("test-writer", Settings(nats_url=nats_server))
    await broker.connect()
    yield await JobStore(broker, TOPO, source="test-writer").open()
    await broker.stop()


@contextlib.asynccontextmanager
async def running_relay(nc: NATS, store: JobStore) -> AsyncIterator[RecordRelay]:
    relay = RecordRelay(nc, TOPO, store, settle_s=0.2)
    task = asyncio.ensure_future(relay.run())
    try:
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def a_job() -> JobRecord:
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    spec = JobRequest(name="relay-test", resources=Resources(node_count=1))
    return new_record(job_id=job_id, name="relay-test", version="V001", spec=spec,
                      request_id=f"req-{job_id}", now=time.time())


async def write_then_die(store: JobStore, record: JobRecord, change) -> JobRecord:
    """What ``JobStore.apply`` does before its publish, and nothing after it."""
    _, revision = await store.get(record.id)
    updated = transition(record, change, time.time())
    await store.kv.update(record.id, encode(updated), last=revision)  # type: ignore[union-attr]
    return updated


async def relay_settled(nc: NATS) -> bool:
    """The relay has acknowledged every revision of the job bucket."""
    spec = TOPO.consumer_record_relay
    info = await nc.jetstream().consumer_info(spec.stream, spec.durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_terminal_event_lost_by_a_crashed_writer_is_published_once(nc: NATS, store: JobStore) -> None:
    record = await store.create(a_job())
    pending = (await store.apply(record.id, Validated(change_id="verdict"))).record
    failed = await write_then_die(store, pending, PlacementImpossible(change_id="placement-impossible",
                                                                       reason="no pool"))
    assert failed.status == Status.FAILED
    subject = TOPO.job_events(record.id)
    assert await subject_count(nc, TOPO.stream_events.name, subject) == 2, "the terminal event is missing"

    async with running_relay(nc, store) as relay:
        await eventually(lambda: relay_settled(nc), what="the relay to acknowledge every revision")
        assert relay.published == 1
    events = [body for _, body in await read_stream(nc, subject, count=3)]
    assert [e["id"] for e in events] == [f"{record.id}.{seq}" for seq in range(3)]
    assert events[-1]["data"]["status"] == "Failed"

    # the crashed writer's publish, had it come late after all, is dropped as a duplicate
    await store.publish_event(failed, failed.history[-1])
    assert await subject_count(nc, TOPO.stream_events.name, subject) == 3


async def test_a_new_job_whose_event_and_validation_never_went_out_is_announced(nc: NATS, store: JobStore) -> None:
    record = a_job()
    await store.kv.create(record.id, encode(record))  # type: ignore[union-attr]  # then died
    assert await subject_count(nc, TOPO.stream_events.name, TOPO.job_events(record.id)) == 0

    async with running_relay(nc, store) as relay:
        await eventually(lambda: relay_settled(nc), what="the relay to acknowledge every revision")
        assert relay.published == 2  # the submitted event and the validation work item
    assert await subject_count(nc, TOPO.stream_events.name, TOPO.job_events(record.id)) == 1
    assert await subject_count(nc, TOPO.stream_work.name, TOPO.work_validate) == 1
    item = await nc.jetstream().get_last_msg(TOPO.stream_work.name, TOPO.work_validate)
    assert item.data == encode(WorkItem(record.id))


async def test_records_whose_writers_published_cost_no_publish(nc: NATS, store: JobStore) -> None:
    records = [await store.create(a_job()) for _ in range(20)]
    for record in records:
        await store.apply(record.id, Validated(change_id="verdict"))
    async with running_relay(nc, store) as relay:
        await eventually(lambda: relay_settled(nc), what="the relay to acknowledge every revision")
        assert relay.published == 0
    for record in records:
        assert await subject_count(nc, TOPO.stream_events.name, TOPO.job_events(record.id)) == 2


async def test_an_undecodable_record_is_dead_lettered_not_retried_for_ever(nc: NATS, store: JobStore) -> None:
    await store.kv.put("job-garbage", b"{not json")  # type: ignore[union-attr]
    async with running_relay(nc, store):
        await eventually(lambda: relay_settled(nc), what="the relay to settle the bad record")
    dead = await subject_count(nc, TOPO.stream_dlq.name, TOPO.dlq(TOPO.consumer_record_relay.durable))
    assert dead == 1
