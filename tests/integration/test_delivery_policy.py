"""The delivery policy of ``trainmaster.bus.durable_subscriber`` against a real nats-server:
retry after a failure (with the consumer's delay), dead-letter after ``max_deliver``, and
dead-letter a ``Poison`` message at once."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import pairwise

import nats
import pytest
from faststream.nats import NatsBroker, NatsMessage
from nats.aio.client import Client as NATS
from support import eventually, settled, subject_count

from trainmaster.bus import ERROR_HEADER, Poison, durable_subscriber, ensure_consumer, ensure_stream, make_broker
from trainmaster.settings import Settings
from trainmaster.topology import ConsumerSpec, Topology

pytestmark = pytest.mark.integration

TOPO = Topology()
RETRY_DELAYS = (0.3, 0.6)
# a consumer of the tests' own, on a subject of the declared WORK stream
SPEC = ConsumerSpec("delivery-test", TOPO.stream_work.name, TOPO.work_validate, ack_wait_s=10, max_deliver=3,
                    retry_delays_s=RETRY_DELAYS, batch_size=4)


@dataclass
class Recorder:
    """What the handler saw: per message body, (delivery count, monotonic time) of each call."""

    calls: dict[bytes, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    fail_times: dict[bytes, int] = field(default_factory=dict)  # body -> how many deliveries fail

    async def handle(self, msg: NatsMessage) -> None:
        delivered = msg.raw_message.metadata.num_delivered
        self.calls[msg.body].append((delivered, time.monotonic()))
        if msg.body.startswith(b"poison"):
            raise Poison("cannot be decoded")
        if delivered <= self.fail_times.get(msg.body, 0):
            raise RuntimeError(f"boom on delivery {delivered}")

    def deliveries(self, body: bytes) -> list[int]:
        return [d for d, _ in self.calls[body]]


@pytest.fixture
async def js_only(nats_server: str) -> AsyncIterator[NATS]:
    """Only the streams this test needs (not the services' consumers), and the test's consumer."""
    nc = await nats.connect(nats_server, connect_timeout=5)
    js = nc.jetstream()
    await ensure_stream(js, TOPO.stream_work, 1)
    await ensure_stream(js, TOPO.stream_dlq, 1)
    await ensure_consumer(js, SPEC)
    yield nc
    await nc.close()


@pytest.fixture
async def recorder(nats_server: str, js_only: NATS) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    broker: NatsBroker = make_broker("delivery-test", Settings(nats_url=nats_server))
    durable_subscriber(broker, TOPO, SPEC, recorder.handle)
    await broker.start()
    yield recorder
    await broker.stop()


async def consumed(nc: NATS, seq: int) -> None:
    """The consumer acked or terminated everything up to ``seq`` and holds nothing for later: no
    delivery of those messages can come any more, so counting deliveries now is final."""
    await settled(nc, SPEC.stream, SPEC.durable, past_seq=seq, timeout_s=30)


async def publish(nc: NATS, body: bytes) -> int:
    """The stream sequence of the published message."""
    return (await nc.jetstream().publish(SPEC.filter_subject, body, stream=SPEC.stream)).seq


async def dead_letters(nc: NATS, count: int) -> list:
    sub = await nc.jetstream().subscribe(TOPO.dlq(SPEC.durable), ordered_consumer=True)
    try:
        return [await sub.next_msg(timeout=10) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_a_handler_that_fails_once_is_redelivered_then_acked(js_only: NATS, recorder: Recorder) -> None:
    body = b"fails once"
    recorder.fail_times[body] = 1
    seq = await publish(js_only, body)
    await eventually(lambda: len(recorder.calls[body]) >= 2, what="the redelivery")
    await consumed(js_only, seq)

    assert recorder.deliveries(body) == [1, 2]
    (_, t1), (_, t2) = recorder.calls[body]
    assert t2 - t1 >= RETRY_DELAYS[0] * 0.8, "the retry waits the consumer's delay"
    assert recorder.deliveries(body) == [1, 2], "acked: not delivered again"
    # work-queue stream: the acked message is gone; nothing was dead-lettered
    assert await subject_count(js_only, SPEC.stream, SPEC.filter_subject) == 0
    assert await subject_count(js_only, TOPO.stream_dlq.name, TOPO.dlq(SPEC.durable)) == 0


async def test_a_handler_that_always_fails_is_dead_lettered_after_max_deliver(
    js_only: NATS, recorder: Recorder
) -> None:
    body = b"always fails"
    recorder.fail_times[body] = 1000
    seq = await publish(js_only, body)
    [letter] = await dead_letters(js_only, 1)
    await consumed(js_only, seq)

    assert recorder.deliveries(body) == list(range(1, SPEC.max_deliver + 1))
    times = [t for _, t in recorder.calls[body]]
    assert times[1] - times[0] >= RETRY_DELAYS[0] * 0.8
    assert times[2] - times[1] >= RETRY_DELAYS[1] * 0.8
    assert letter.data == body
    assert letter.subject == TOPO.dlq(SPEC.durable)
    assert f"boom on delivery {SPEC.max_deliver}" in letter.headers[ERROR_HEADER]
    assert "RuntimeError" in letter.headers[ERROR_HEADER]
    assert letter.headers["Tm-Original-Subject"] == SPEC.filter_subject
    assert letter.headers["Tm-Consumer"] == SPEC.durable

    assert len(recorder.calls[body]) == SPEC.max_deliver, "terminated: never delivered again"
    assert await subject_count(js_only, TOPO.stream_dlq.name, TOPO.dlq(SPEC.durable)) == 1


async def test_a_poison_message_is_dead_lettered_at_once(js_only: NATS, recorder: Recorder) -> None:
    body = b"poison \xff\x00"
    await publish(js_only, body)
    good = b"good after poison"
    last = await publish(js_only, good)
    [letter] = await dead_letters(js_only, 1)
    await consumed(js_only, last)

    assert recorder.deliveries(body) == [1]
    assert recorder.deliveries(good) == [1], "the consumer goes on with the next message"
    assert letter.data == body
    assert letter.headers[ERROR_HEADER].startswith("poison: cannot be decoded")
    assert recorder.deliveries(body) == [1], "terminated: never delivered again"
    assert await subject_count(js_only, TOPO.stream_dlq.name, TOPO.dlq(SPEC.durable)) == 1


async def test_dead_letters_of_a_redelivered_message_are_not_doubled(js_only: NATS, recorder: Recorder) -> None:
    """The dead letter carries a Nats-Msg-Id made of the consumer and the stream sequence: should
    the terminate be lost and the message come back, its second dead letter is dropped."""
    body = b"poison twice"
    await publish(js_only, body)
    [letter] = await dead_letters(js_only, 1)
    assert letter.headers["Nats-Msg-Id"] == f"{SPEC.durable}:{letter.headers['Tm-Original-Sequence']}"
    ack = await js_only.jetstream().publish(letter.subject, letter.data, headers=dict(letter.headers))
    assert ack.duplicate


async def test_a_dead_letter_that_cannot_be_published_leaves_the_message_to_come_again(nats_server: str) -> None:
    """No DLQ stream here, so every dead-letter publish fails: the message is nak'ed with the retry
    delay (not terminated, not left to the 10 s ack wait) and comes again until ``max_deliver``;
    after that it is still in its stream, never lost."""
    nc = await nats.connect(nats_server, connect_timeout=5)
    await ensure_stream(nc.jetstream(), TOPO.stream_work, 1)
    await ensure_consumer(nc.jetstream(), SPEC)
    recorder = Recorder()
    broker: NatsBroker = make_broker("delivery-test", Settings(nats_url=nats_server))
    durable_subscriber(broker, TOPO, SPEC, recorder.handle)
    await broker.start()
    try:
        body = b"poison without a dead-letter stream"
        await publish(nc, body)
        await eventually(lambda: len(recorder.calls[body]) >= SPEC.max_deliver, timeout_s=8,
                         what="every delivery, each soon after the failed dead letter")
        times = [t for _, t in recorder.calls[body]]
        assert all(later - earlier < SPEC.ack_wait_s / 2 for earlier, later in pairwise(times))
        assert recorder.deliveries(body) == list(range(1, SPEC.max_deliver + 1))
        assert await subject_count(nc, SPEC.stream, SPEC.filter_subject) == 1, "still in its stream"
    finally:
        await broker.stop()
        await nc.close()
