"""The scheduler's durable consumers (``scheduler-status``: agents' reports; ``scheduler-queue``:
work items), served with a plain nats-py pull loop instead of a faststream subscriber.

Why: every placed job brings one work item and at least two reports, and faststream's per-message
path (middlewares, dependency injection with a worker-thread hop per message) cost the scheduler
about twice what the handler itself does, so under load the reports fell seconds behind the
placements.  The delivery policy is ``trainmaster.bus``'s, unchanged: ack after the handler
succeeded; ``Poison`` and a failure on the last allowed delivery are copied to
``<prefix>.dlq.<durable>`` (headers ``Tm-Error``, ``Tm-Original-Subject``, ``Tm-Consumer``) and
terminated; any other failure is nak'ed with the consumer's retry delay.  With tracing on, each
message is handled in a consumer span continuing the trace of its ``traceparent`` header (what
faststream's telemetry middleware did), so an agent's report stays in its job's trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from trainmaster.bus import ERROR_HEADER, MSG_ID, TRANSIENT_BUS_ERRORS, Poison, retry_delay
from trainmaster.topology import ConsumerSpec, Topology

log = structlog.get_logger()
_tracer = trace.get_tracer("trainmaster.scheduler")
RawHandler = Callable[[bytes], Awaitable[None]]


async def fetch_batch(sub: JetStreamContext.PullSubscription, batch_size: int, durable: str) -> list[Msg]:
    """The next messages, or none: a fetch that times out, or meets a server that cannot answer
    for a moment (a cluster fail-over, a restart), is not the loop's end."""
    try:
        return await sub.fetch(batch_size, timeout=5.0)
    except (TimeoutError, NatsTimeoutError):
        return []
    except TRANSIENT_BUS_ERRORS as exc:
        log.warning("fetch failed; trying again", consumer=durable, error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(1.0)
        return []


class PullConsumer:
    def __init__(self, js: JetStreamContext, topo: Topology, spec: ConsumerSpec, handle: RawHandler,
                 batch_size: int | None = None, tracing: bool = False) -> None:
        self.js = js
        self.topo = topo
        self.spec = spec
        self.handle = handle
        self.batch_size = batch_size or spec.batch_size
        self.tracing = tracing

    async def run(self) -> None:
        """Fetch a batch, handle its messages concurrently, settle each; for ever (the consumer
        itself is provisioned with the topology)."""
        sub = await self.js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream)
        while True:
            messages = await fetch_batch(sub, self.batch_size, self.spec.durable)
            await asyncio.gather(*(self.settle(msg) for msg in messages))

    async def settle(self, msg: Msg) -> None:
        if not self.tracing:
            await self._settle(msg)
            return
        parent = propagate.extract(dict(msg.headers or {}))
        with _tracer.start_as_current_span(f"{self.spec.durable} process", context=parent, kind=SpanKind.CONSUMER,
                                           attributes={"messaging.destination.name": msg.subject}):
            await self._settle(msg)

    async def _settle(self, msg: Msg) -> None:
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        try:
            await self.handle(msg.data)
        except Poison as exc:
            await self.dead_letter(msg, f"poison: {exc}")
        except Exception as exc:
            if delivered >= self.spec.max_deliver:
                log.exception("handler failed on the last delivery", consumer=self.spec.durable, delivered=delivered)
                await self.dead_letter(msg, f"{type(exc).__name__}: {exc}")
            else:
                delay = retry_delay(self.spec, delivered)
                log.warning("handler failed; will retry", consumer=self.spec.durable, delivered=delivered,
                            retry_in_s=delay, error=f"{type(exc).__name__}: {exc}")
                await msg.nak(delay=delay)
        else:
            await msg.ack()

    async def dead_letter(self, msg: Msg, error: str) -> None:
        headers = {ERROR_HEADER: error[:1000], "Tm-Original-Subject": msg.subject, "Tm-Consumer": self.spec.durable}
        if msg.metadata:
            headers["Tm-Original-Sequence"] = str(msg.metadata.sequence.stream)
            headers[MSG_ID] = f"{self.spec.durable}:{msg.metadata.sequence.stream}"
        try:
            await self.js.publish(self.topo.dlq(self.spec.durable), msg.data, stream=self.topo.stream_dlq.name,
                                  headers=headers, timeout=10)
        except Exception as exc:  # not dead-lettered: let the server deliver it again later
            log.warning("dead-letter publish failed; the message will come again", error=str(exc))
            await msg.nak(delay=retry_delay(self.spec, 1))
            return
        log.error("message dead-lettered", consumer=self.spec.durable, error=error)
        await msg.term()
