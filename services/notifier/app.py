"""notifier: consumes job events and decides which subscriptions they concern.

Delivery to webhooks and email comes with the notifications issue; until then each due
notification is recorded as a structured log line (``notification due``)."""

from __future__ import annotations

import msgspec
import structlog
from faststream.nats import NatsMessage

from services.notifier.core import subscription_event, wanted
from trainmaster.bus import Poison, durable_subscriber
from trainmaster.jobstore import JobStore
from trainmaster.messages import JobCloudEvent
from trainmaster.service import ServiceContext

log = structlog.get_logger()
_decode_event = msgspec.json.Decoder(JobCloudEvent).decode


async def setup(ctx: ServiceContext) -> None:
    store = await JobStore(ctx.broker, ctx.topo, source="notifier").open()

    async def on_event(msg: NatsMessage) -> None:
        try:
            event = _decode_event(msg.body)
        except msgspec.DecodeError as exc:
            raise Poison(str(exc)) from exc
        name = subscription_event(event.data.status, event.data.previous_status)
        if name is None:
            return
        with structlog.contextvars.bound_contextvars(job_id=event.data.job_id):
            record = await store.find(event.data.job_id)
            topic = wanted(record, name) if record else None
            if topic:
                log.info("notification due", event_id=event.id, subscription_event=name, topic=topic,
                         status=event.data.status.value)

    durable_subscriber(ctx.broker, ctx.topo, ctx.topo.consumer_notifier, on_event)
