"""The scheduler's durable consumers (``scheduler-status``: agents' reports; ``scheduler-queue``:
work items), served with a plain nats-py pull loop instead of a faststream subscriber.

Why: every placed job brings one work item and at least two reports, and faststream's per-message
path (middlewares, dependency injection with a worker-thread hop per message) cost the scheduler
about twice what the handler itself does, so under load the reports fell seconds behind the
placements.  The delivery policy is the one every consumer shares
(``trainmaster.delivery_policy``): ack after the handler succeeded; ``Poison`` and a failure on
the last allowed delivery are copied to ``<prefix>.dlq.<durable>`` and terminated (nak'ed instead
when that copy cannot be published); any other failure is nak'ed with the consumer's retry delay.
With tracing on, each message is handled in a consumer span continuing the trace of its
``traceparent`` header (what faststream's telemetry middleware did), so an agent's report stays
in its job's trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from trainmaster.bus import fetch_batch
from trainmaster.delivery_policy import Settler
from trainmaster.topology import ConsumerSpec, Topology

log = structlog.get_logger()
_tracer = trace.get_tracer("trainmaster.scheduler")
# a handler gets the message itself: the subject says who published it (the reports: trust.py)
MessageHandler = Callable[[Msg], Awaitable[None]]


class PullConsumer:
    def __init__(self, js: JetStreamContext, topo: Topology, spec: ConsumerSpec, handle: MessageHandler,
                 batch_size: int | None = None, tracing: bool = False) -> None:
        self.js = js
        self.topo = topo
        self.spec = spec
        self.handle = handle
        self.batch_size = batch_size or spec.batch_size
        self.tracing = tracing
        self.settler = Settler.for_js(js, topo, spec)

    async def run(self) -> None:
        """Fetch a batch, handle its messages concurrently, settle each; for ever (the consumer
        itself is provisioned with the topology)."""
        sub = await self.js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream)
        while True:
            messages = await fetch_batch(sub, self.batch_size, self.spec.durable)
            await asyncio.gather(*(self.settle(msg) for msg in messages))

    async def settle(self, msg: Msg) -> None:
        if not self.tracing:
            await self.settler.run(msg, lambda: self.handle(msg))
            return
        parent = propagate.extract(dict(msg.headers or {}))
        with _tracer.start_as_current_span(f"{self.spec.durable} process", context=parent, kind=SpanKind.CONSUMER,
                                           attributes={"messaging.destination.name": msg.subject}):
            await self.settler.run(msg, lambda: self.handle(msg))
