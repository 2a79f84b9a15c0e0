"""The delivery policy every consumer shares (trainmaster.delivery_policy): the pure decision, and
the adapter that carries it out on a message.  (Against a real server:
tests/integration/test_delivery_policy.py.)"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.delivery import Deliverer
from trainmaster.delivery_policy import (
    ERROR_HEADER,
    FALLBACK_RETRY_S,
    MSG_ID,
    Action,
    Outcome,
    Poison,
    Settlement,
    Settler,
    decide,
    outcome_of,
    retry_delay,
)
from trainmaster.settings import Settings
from trainmaster.topology import ConsumerSpec, Topology

TOPO = Topology()

specs = st.builds(
    ConsumerSpec,
    durable=st.just("test"), stream=st.just("TM_WORK"), filter_subject=st.just("tm.work.x"),
    ack_wait_s=st.just(30.0),
    max_deliver=st.one_of(st.just(-1), st.integers(min_value=1, max_value=20)),
    retry_delays_s=st.lists(st.floats(min_value=0.0, max_value=3600.0), max_size=6).map(tuple),
)
deliveries = st.integers(min_value=1, max_value=50)


# ------------------------------------------------------------------------------ decide
@given(specs, deliveries)
def test_success_always_acks(spec: ConsumerSpec, delivered: int) -> None:
    assert decide(Outcome.OK, delivered, spec) == Settlement(Action.ACK)


@given(specs, deliveries)
def test_poison_is_always_dead_lettered(spec: ConsumerSpec, delivered: int) -> None:
    assert decide(Outcome.POISON, delivered, spec).action is Action.DEAD_LETTER


@given(specs, deliveries)
def test_an_error_never_naks_at_or_past_max_deliver(spec: ConsumerSpec, delivered: int) -> None:
    settlement = decide(Outcome.ERROR, delivered, spec)
    if spec.max_deliver > 0 and delivered >= spec.max_deliver:
        assert settlement.action is Action.DEAD_LETTER
    else:  # a later delivery is allowed: it is retried, never dead-lettered
        assert settlement.action is Action.NAK


@given(specs, deliveries, st.sampled_from([Outcome.POISON, Outcome.ERROR]))
def test_every_delay_comes_from_the_consumers_retry_delays(spec: ConsumerSpec, delivered: int,
                                                           outcome: Outcome) -> None:
    # a dead letter carries the delay too: the nak should its publish fail
    delay = decide(outcome, delivered, spec).delay_s
    assert delay in (spec.retry_delays_s or (FALLBACK_RETRY_S,))


@given(specs, st.integers(min_value=1, max_value=49))
def test_delays_never_shrink_along_a_sorted_schedule(spec: ConsumerSpec, delivered: int) -> None:
    spec = ConsumerSpec(spec.durable, spec.stream, spec.filter_subject, spec.ack_wait_s, spec.max_deliver,
                        retry_delays_s=tuple(sorted(spec.retry_delays_s)))
    assert retry_delay(spec, delivered) <= retry_delay(spec, delivered + 1)


@pytest.mark.parametrize(("delivered", "delay"), [(0, 1.0), (1, 1.0), (2, 5.0), (3, 15.0), (4, 15.0), (99, 15.0)])
def test_the_last_delay_repeats(delivered: int, delay: float) -> None:
    spec = TOPO.consumer_record_relay  # unlimited deliveries, the default delays 1, 5, 15 s
    assert decide(Outcome.ERROR, delivered, spec) == Settlement(Action.NAK, delay)


def test_a_consumer_without_delays_retries_after_the_fallback() -> None:
    assert retry_delay(TOPO.consumer_notify_deliver, 3) == FALLBACK_RETRY_S


def test_outcome_of_an_exception() -> None:
    assert outcome_of(None) is Outcome.OK
    assert outcome_of(Poison("x")) is Outcome.POISON
    assert outcome_of(RuntimeError("x")) is Outcome.ERROR


# ------------------------------------------------------------------------------ the adapter
SPEC = ConsumerSpec("adapter-test", "TM_WORK", "tm.work.x", ack_wait_s=30, max_deliver=3, retry_delays_s=(2.0, 7.0))


class FakeMsg:
    """What the adapter uses of a nats-py ``Msg``."""

    def __init__(self, delivered: int = 1, js_message: bool = True) -> None:
        self.data = b"body"
        self.subject = "tm.work.x"
        self.metadata = (SimpleNamespace(num_delivered=delivered, sequence=SimpleNamespace(stream=42))
                         if js_message else None)
        self.settled: list[tuple] = []

    async def ack(self) -> None:
        self.settled.append(("ack",))

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(("nak", delay))

    async def term(self) -> None:
        self.settled.append(("term",))


class FakeDlq:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.letters: list[tuple[str, bytes, dict[str, str]]] = []

    async def __call__(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        if self.fail:
            raise self.fail
        self.letters.append((subject, body, headers))


def run(msg: FakeMsg, exc: Exception | None, dlq: FakeDlq | None = None) -> FakeDlq:
    dlq = dlq or FakeDlq()

    async def handle() -> None:
        if exc:
            raise exc

    asyncio.run(Settler(SPEC, "tm.dlq.adapter-test", dlq).run(msg, handle))  # type: ignore[arg-type]
    return dlq


def test_success_acks_the_message() -> None:
    msg = FakeMsg()
    assert run(msg, None).letters == [] and msg.settled == [("ack",)]


def test_an_error_with_deliveries_left_naks_with_the_delay() -> None:
    msg = FakeMsg(delivered=2)
    assert run(msg, RuntimeError("KV timed out")).letters == [] and msg.settled == [("nak", 7.0)]


def test_a_dead_letter_carries_the_error_and_where_the_message_came_from() -> None:
    msg = FakeMsg(delivered=1)
    [(subject, body, headers)] = run(msg, Poison("not a work item")).letters
    assert subject == "tm.dlq.adapter-test" and body == b"body"
    assert headers == {
        ERROR_HEADER: "poison: not a work item",
        "Tm-Original-Subject": "tm.work.x",
        "Tm-Consumer": "adapter-test",
        "Tm-Original-Sequence": "42",
        MSG_ID: "adapter-test:42",  # dead-lettered twice is one letter
    }
    assert msg.settled == [("term",)]


def test_an_error_on_the_last_delivery_is_dead_lettered_and_terminated() -> None:
    msg = FakeMsg(delivered=SPEC.max_deliver)
    [(_, _, headers)] = run(msg, RuntimeError("boom")).letters
    assert headers[ERROR_HEADER] == "RuntimeError: boom" and msg.settled == [("term",)]


@pytest.mark.parametrize(("exc", "delivered", "delay"), [(Poison("x"), 1, 2.0), (RuntimeError("x"), 3, 7.0)])
def test_a_failed_dead_letter_publish_naks_instead_of_terminating(exc: Exception, delivered: int,
                                                                  delay: float) -> None:
    msg = FakeMsg(delivered)
    run(msg, exc, FakeDlq(fail=TimeoutError("no stream response")))
    assert msg.settled == [("nak", delay)]  # never terminated: the message is not lost


def test_the_error_header_is_bounded() -> None:
    msg = FakeMsg()
    [(_, _, headers)] = run(msg, Poison("x" * 5000)).letters
    assert len(headers[ERROR_HEADER]) == 1000


def test_a_message_without_jetstream_metadata_gets_no_sequence_headers() -> None:
    msg = FakeMsg(js_message=False)
    [(_, _, headers)] = run(msg, Poison("x")).letters
    assert "Tm-Original-Sequence" not in headers and MSG_ID not in headers


def test_messages_that_failed_together_are_settled_by_the_most_delivered_one() -> None:
    msgs = [FakeMsg(1), FakeMsg(2)]
    settler = Settler(SPEC, "tm.dlq.adapter-test", FakeDlq())
    asyncio.run(settler.failed_together(msgs, RuntimeError("x")))  # type: ignore[arg-type]
    assert [m.settled for m in msgs] == [[("nak", 7.0)], [("nak", 7.0)]]
    last = [FakeMsg(1), FakeMsg(SPEC.max_deliver)]
    asyncio.run(settler.failed_together(last, RuntimeError("x")))  # type: ignore[arg-type]
    assert [m.settled for m in last] == [[("term",)], [("term",)]]


class GoneMsg(FakeMsg):
    async def nak(self, delay: float | None = None) -> None:
        raise ConnectionError("connection closed")


def test_a_nak_that_cannot_be_sent_does_not_stop_the_consumer() -> None:
    msgs = [GoneMsg(1), FakeMsg(1)]
    settler = Settler(SPEC, "tm.dlq.adapter-test", FakeDlq())
    asyncio.run(settler.failed_together(msgs, RuntimeError("x")))  # type: ignore[arg-type]
    assert msgs[1].settled == [("nak", 2.0)]  # the other is redelivered after its ack wait


# ------------------------------------------------------------------------------ its users
class FakeJS:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str], str]] = []

    async def publish(self, subject: str, payload: bytes, stream: str, headers: dict[str, str],
                      timeout: float) -> None:
        self.published.append((subject, payload, headers, stream))


def test_the_notifiers_sender_dead_letters_an_undecodable_task_by_the_policy() -> None:
    js = FakeJS()
    deliverer = Deliverer(js, TOPO, Settings(), None, None, None, None, None)  # type: ignore[arg-type]
    msg = FakeMsg()
    asyncio.run(deliverer.handle(msg))  # type: ignore[arg-type]
    [(subject, body, headers, stream)] = js.published
    assert subject == TOPO.dlq("notifier-deliver") and stream == TOPO.stream_dlq.name and body == b"body"
    assert headers[ERROR_HEADER].startswith("poison: undecodable delivery task")
    assert headers["Tm-Original-Sequence"] == "42" and headers[MSG_ID] == "notifier-deliver:42"
    assert msg.settled == [("term",)]
