"""The topics API: request/reply on ``tm.topics.<verb>``, answered in queue group ``notifier``.

Every reply is the result or an error ``{"error": {"code", "message", "details"}}``.  Writes are
compare-and-set on the topic's one KV key, so any number of notifier replicas may answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.nats import NatsBroker, NatsMessage

from services.notifier import topics as core
from services.notifier.guard import AddressRefused, InvalidUrl, Resolve, check_url, system_resolve
from services.notifier.sealing import SubscriptionSecrets
from services.notifier.store import DeliveryLog, TopicStore
from services.notifier.topics import ApiProblem
from trainmaster import audit, kvstore
from trainmaster.bus import MSG_ID, error_reply, responder
from trainmaster.decoding import EmptyRequest, RequestError, decode_as
from trainmaster.messages import (
    DeliveriesRequest,
    DeliveryList,
    SubscribeRequest,
    SubscriptionList,
    TopicCreate,
    TopicList,
    TopicRecord,
    TopicRef,
    UnsubscribeRequest,
    Violation,
    encode,
)
from trainmaster.settings import Settings
from trainmaster.topology import Topology

AUDITED = {"create": "topic_create", "delete": "topic_delete", "subscribe": "subscribe",
           "unsubscribe": "unsubscribe"}
QUEUE = "notifier"


def _decoder(type_: type, max_bytes: int) -> Callable[[bytes], Any]:
    """The body as ``type_`` (an empty body is ``{}``), or RequestError naming the field and the fix
    (the same decoding and error shapes as every other verb: too large, too deep, not an object)."""

    def parse(body: bytes) -> Any:
        return decode_as(body if body.strip() else b"{}", type_, max_bytes)

    return parse


class TopicsApi:
    def __init__(self, topo: Topology, settings: Settings, topics: TopicStore, records: DeliveryLog,
                 secrets: SubscriptionSecrets, purge: Callable[[str], Awaitable[None]],
                 resolve: Resolve = system_resolve, clock: Callable[[], float] = time.time) -> None:
        self.topo = topo
        self.settings = settings
        self.topics = topics
        self.records = records
        self.secrets = secrets
        self.purge = purge  # drops the pending deliveries on a subject of TM_DELIVERIES
        self.resolve = resolve
        self.clock = clock

    def register(self, broker: NatsBroker) -> None:
        handlers: dict[str, tuple[type, Callable[[Any], Awaitable[object]]]] = {
            "create": (TopicCreate, self.create),
            "list": (EmptyRequest, self.list),
            "get": (TopicRef, self.get),
            "delete": (TopicRef, self.delete),
            "subscribe": (SubscribeRequest, self.subscribe),
            "unsubscribe": (UnsubscribeRequest, self.unsubscribe),
            "subscriptions": (TopicRef, self.subscriptions),
            "deliveries": (DeliveriesRequest, self.deliveries),
        }
        for verb in self.topo.topic_verbs:
            type_, fn = handlers[verb]
            parse = _decoder(type_, self.settings.api.max_request_bytes)
            handle = self._answer(parse, fn)
            if verb in AUDITED:
                handle = self._audited(broker, AUDITED[verb], handle)
            responder(broker, self.topo.topics(verb), QUEUE, handle)

    def _audited(self, broker: NatsBroker, action: str, handle: Callable[[NatsMessage], Awaitable[bytes]]
                 ) -> Callable[[NatsMessage], Awaitable[bytes]]:
        """``handle``, its outcome recorded on the audit trail.  Topics belong to no account (project
        ``@cluster``); the entry names the topic and the subscription, never the signing secret."""

        async def audited(msg: NatsMessage) -> bytes:
            reply = await handle(msg)
            body, answer = audit.loose_body(msg.body), audit.loose_body(reply)
            topic = body.get("topic") or body.get("name")
            subscription = body.get("subscription_id") or (answer.get("id") if "error" not in answer else None)
            detail = {"subscription": subscription} if isinstance(subscription, str) else {}
            entry = audit.entry(audit.actor_of(msg.headers), action, audit.CLUSTER,
                                topic if isinstance(topic, str) else "", reason=audit.refusal_of(reply), detail=detail)
            await audit.record(broker, self.topo, entry, (msg.headers or {}).get(MSG_ID) or msg.correlation_id)
            return reply

        return audited

    @staticmethod
    def _answer(parse: Callable[[bytes], Any], fn: Callable[[Any], Awaitable[object]]) -> Callable[
            [NatsMessage], Awaitable[bytes]]:
        async def handle(msg: NatsMessage) -> bytes:
            try:
                return encode(await fn(parse(msg.body)))
            except RequestError as err:
                return error_reply(err.body.code, err.body.message, err.body.details)
            except ApiProblem as p:
                details = [Violation(p.field, p.detail_code, str(p))] if p.field else []
                return error_reply(p.code, str(p), details)
            except kvstore.ChangeConflict as exc:
                return error_reply("conflict", f"{exc}; try again")

        return handle

    # ------------------------------------------------------------------ verbs
    async def create(self, req: TopicCreate) -> object:
        record = TopicRecord(name=req.name, description=req.description, created_at=self.clock())
        if not await self.topics.create(record):
            raise ApiProblem("conflict", f"topic {req.name!r} exists already", "name", "exists")
        return core.topic_view(record)

    async def list(self, _req: EmptyRequest) -> object:
        return TopicList([core.topic_view(t) for t in await self.topics.all()])

    async def get(self, req: TopicRef) -> object:
        record, _ = await self.topics.require(req.name)
        return core.topic_view(record)

    async def delete(self, req: TopicRef) -> object:
        record = await self.topics.remove(req.name, lambda current: core.check_delete(current, req.force))
        for sub in record.subscriptions:
            await self.purge(self.topo.notify_deliver(req.name, sub.id))
        return {"deleted": req.name, "subscriptions_removed": len(record.subscriptions)}

    async def subscribe(self, req: SubscribeRequest) -> object:
        await self.topics.require(req.topic)
        if req.protocol == "email":
            endpoint = core.check_email(req.endpoint)
        else:
            endpoint = req.endpoint.strip()
            try:
                await check_url(endpoint, self.resolve, self.settings.notifier.webhook_allow_private)
            except AddressRefused as exc:
                raise ApiProblem("invalid_request", f"webhook URL refused: {exc}", "endpoint",
                                 "forbidden_address") from None
            except InvalidUrl as exc:
                raise ApiProblem("invalid_request", f"webhook URL refused: {exc}", "endpoint", "invalid_url") from None
        sub = core.subscription_of(req, endpoint, core.new_subscription_id(), self.clock())
        stored = self.secrets.seal(req.topic, sub)  # the secret is kept encrypted, and shown only here
        await self.topics.change(req.topic, lambda t: core.add_subscription(t, stored))
        return core.view(req.topic, sub, with_secret=True)

    async def unsubscribe(self, req: UnsubscribeRequest) -> object:
        await self.topics.change(req.topic, lambda t: core.remove_subscription(t, req.subscription_id))
        await self.purge(self.topo.notify_deliver(req.topic, req.subscription_id))
        return {"removed": req.subscription_id, "topic": req.topic}

    async def subscriptions(self, req: TopicRef) -> object:
        record, _ = await self.topics.require(req.name)
        return SubscriptionList(record.name, [core.view(record.name, s) for s in record.subscriptions])

    async def deliveries(self, req: DeliveriesRequest) -> object:
        items, total = await self.records.list(req.topic, req.dead, req.limit)
        if not items and await self.topics.get(req.topic) is None:
            raise ApiProblem("not_found", f"no topic {req.topic!r} and no deliveries recorded for it", "topic")
        return DeliveryList(topic=req.topic, dead=req.dead, deliveries=items, total=total)
