"""The scheduler's plain pull loop (services/scheduler/consumer.py) settles each message with the
delivery policy every consumer shares (``trainmaster.delivery_policy``), and continues the
message's trace when tracing is on.  (Against a real server: the scheduler's integration tests,
e.g. undecodable reports dead-lettered.)"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from opentelemetry import trace

from services.scheduler.consumer import PullConsumer
from trainmaster.bus import ERROR_HEADER, Poison
from trainmaster.topology import Topology

TOPO = Topology()
SPEC = TOPO.consumer_scheduler_status  # max deliver 10, delays 1, 5, 15 s
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class FakeMsg:
    def __init__(self, delivered: int = 1, headers: dict | None = None) -> None:
        self.data = b"{}"
        self.subject = TOPO.agent_status("a1")
        self.headers = headers
        self.metadata = SimpleNamespace(num_delivered=delivered, sequence=SimpleNamespace(stream=42))
        self.outcome: tuple | None = None

    async def ack(self) -> None:
        self.outcome = ("ack",)

    async def nak(self, delay: float | None = None) -> None:
        self.outcome = ("nak", delay)

    async def term(self) -> None:
        self.outcome = ("term",)


class FakeJS:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict]] = []

    async def publish(self, subject: str, payload: bytes, stream: str, headers: dict, timeout: float) -> None:
        self.published.append((subject, payload, headers))


def settle(handler, msg: FakeMsg, tracing: bool = False) -> FakeJS:
    js = FakeJS()
    asyncio.run(PullConsumer(js, TOPO, SPEC, handler, tracing=tracing).settle(msg))  # type: ignore[arg-type]
    return js


async def ok(msg: FakeMsg) -> None:
    return None


async def poison(msg: FakeMsg) -> None:
    raise Poison("not a report")


async def broken(msg: FakeMsg) -> None:
    raise RuntimeError("KV timed out")


def test_success_acks():
    msg = FakeMsg()
    assert settle(ok, msg).published == [] and msg.outcome == ("ack",)


def test_poison_is_dead_lettered_at_once_and_terminated():
    msg = FakeMsg()
    js = settle(poison, msg)
    [(subject, body, headers)] = js.published
    assert subject == TOPO.dlq(SPEC.durable) and body == msg.data
    assert headers[ERROR_HEADER] == "poison: not a report" and headers["Tm-Consumer"] == SPEC.durable
    assert msg.outcome == ("term",)


@pytest.mark.parametrize(("delivered", "delay"), [(1, 1.0), (2, 5.0), (3, 15.0), (9, 15.0)])
def test_a_failure_is_retried_later_with_the_consumers_delay(delivered, delay):
    msg = FakeMsg(delivered)
    assert settle(broken, msg).published == [] and msg.outcome == ("nak", delay)


def test_a_failure_on_the_last_delivery_is_dead_lettered():
    msg = FakeMsg(SPEC.max_deliver)
    [(_, _, headers)] = settle(broken, msg).published
    assert headers[ERROR_HEADER] == "RuntimeError: KV timed out" and msg.outcome == ("term",)


@pytest.mark.parametrize("tracing", [True, False])
def test_with_tracing_on_the_handler_runs_in_the_messages_trace(tracing):
    seen: list[int] = []

    async def handler(msg: FakeMsg) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    msg = FakeMsg(headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"})
    settle(handler, msg, tracing=tracing)
    assert (seen == [int(TRACE_ID, 16)]) is tracing and msg.outcome == ("ack",)


def test_the_handler_gets_the_message_with_its_subject():
    seen: list[tuple[str, bytes]] = []

    async def handler(msg: FakeMsg) -> None:  # the subject names the publisher (services/scheduler/trust.py)
        seen.append((msg.subject, msg.data))

    settle(handler, FakeMsg())
    assert seen == [(TOPO.agent_status("a1"), b"{}")]
