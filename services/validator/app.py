"""validator service shell: take a job from ``tm.work.validate``, check it, record the verdict.

The verdict is one change with ``change_id="verdict"``, so however often a work item is
delivered, only one verdict ever lands on a job.  After ``Validated`` the job goes on to the
scheduler through ``tm.work.schedule`` (``Nats-Msg-Id`` = ``<job_id>.schedule``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from faststream.nats import NatsBroker, NatsMessage

from services.validator import facts as facts_adapter
from services.validator.rules import PathFacts, check, warnings
from services.validator.subscriptions import check_subscription
from trainmaster.bus import UNDECODABLE, Handler, Poison, durable_subscriber, publish_js
from trainmaster.jobstore import JobStore
from trainmaster.messages import JobRequest, Rejected, Status, Validated, WorkItem, encode
from trainmaster.service import ServiceContext
from trainmaster.statemachine import IllegalTransition
from trainmaster.topology import Topology

log = structlog.get_logger()
_decode_item = msgspec.json.Decoder(WorkItem).decode

VERDICT = "verdict"

Gather = Callable[[JobRequest], PathFacts]
TopicExists = Callable[[str], Awaitable[bool]]


async def setup(ctx: ServiceContext) -> None:
    store = await JobStore(ctx.broker, ctx.topo, source="validator").open()
    handle = make_handler(store, ctx.broker, ctx.topo, publish_timeout_s=ctx.settings.publish_timeout_s)
    durable_subscriber(ctx.broker, ctx.topo, ctx.topo.consumer_validator, handle)


def make_handler(store: JobStore, broker: NatsBroker, topo: Topology, *,
                 gather: Gather = facts_adapter.gather, publish_timeout_s: float = 10.0,
                 topic_exists: TopicExists | None = None) -> Handler:
    topic_exists = topic_exists or _topics_bucket_lookup(broker, topo)

    async def schedule(job_id: str) -> None:
        await publish_js(broker, topo.work_schedule, encode(WorkItem(job_id)),
                         stream=topo.stream_work.name, msg_id=f"{job_id}.schedule", timeout=publish_timeout_s)

    async def handle(msg: NatsMessage) -> None:
        try:
            item = _decode_item(msg.body)
        except UNDECODABLE as exc:
            raise Poison(f"not a work item: {exc}") from exc
        with structlog.contextvars.bound_contextvars(job_id=item.job_id):
            await validate(item.job_id)

    async def validate(job_id: str) -> None:
        record = await store.find(job_id)
        if record is None:
            log.warning("work item for an unknown job; dropped")
            return
        if record.status != Status.INITIALIZING:
            # a redelivery after the verdict landed: make sure the scheduler heard of it
            if record.status == Status.PENDING:
                await schedule(job_id)
            log.info("verdict already recorded", status=record.status.value)
            return

        spec = record.spec
        path_facts = await asyncio.to_thread(gather, spec)
        sub = spec.subscription
        known = await topic_exists(sub.topic) if sub is not None and sub.topic else None
        violations = check(spec, path_facts) + check_subscription(spec, known)
        change = (Rejected(change_id=VERDICT, violations=violations) if violations
                  else Validated(change_id=VERDICT, warnings=warnings(spec, path_facts)))
        try:
            result = await store.apply(job_id, change)
        except IllegalTransition as exc:
            log.info("job moved on before the verdict; nothing recorded", why=str(exc))
            return
        if result.record.status == Status.PENDING:
            await schedule(job_id)
        if violations:
            log.info("job rejected", violations=len(violations),
                     codes=sorted({v.code for v in violations}), applied=result.applied)
        else:
            log.info("job validated", warnings=len(change.warnings), applied=result.applied,
                     status=result.record.status.value)

    return handle


def _topics_bucket_lookup(broker: NatsBroker, topo: Topology) -> TopicExists:
    """Whether a notification topic exists, from the notifier's ``tm_topics`` bucket."""
    from nats.js.errors import InvalidKeyError, KeyNotFoundError

    bucket: list = []

    async def exists(name: str) -> bool:
        if not bucket:
            bucket.append(await broker.key_value(topo.bucket_topics.name, declare=False))
        try:
            entry = await bucket[0].get(name)
        except (KeyNotFoundError, InvalidKeyError):
            return False
        return bool(entry.value)

    return exists
