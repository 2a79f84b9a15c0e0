"""The topics API: request/reply on ``tm.topics.<verb>``, answered in queue group ``notifier``.

Every request is asked as the caller its headers name (``trainmaster.identity``); ``policy``
decides what it may do with the topic.  Every reply is the result or an error
``{"error": {"code", "message", "details"}}``.  Writes are
compare-and-set on the topic's one KV key, so any number of notifier replicas may answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.nats import NatsBroker, NatsMessage

from services.notifier import policy
from services.notifier import topics as core
from services.notifier.guard import AddressRefused, InvalidUrl, Resolve, check_url, system_resolve
from services.notifier.sealing import SubscriptionSecrets
from services.notifier.store import DeliveryLog, TopicStore, topic_missing
from services.notifier.topics import ApiProblem
from trainmaster import audit, kvstore
from trainmaster.access import Caller, Denied
from trainmaster.bus import MSG_ID, denied_reply, error_reply, responder
from trainmaster.decoding import EmptyRequest, RequestError, decode_as
from trainmaster.identity import Directory
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

Verb = Callable[[Any, Caller], Awaitable[object]]


def _decoder(type_: type, max_bytes: int) -> Callable[[bytes], Any]:
    """The body as ``type_`` (an empty body is ``{}``), or RequestError naming the field and the fix
    (the same decoding and error shapes as every other verb: too large, too deep, not an object)."""

    def parse(body: bytes) -> Any:
        return decode_as(body if body.strip() else b"{}", type_, max_bytes)

    return parse


class TopicsApi:
    def __init__(self, topo: Topology, settings: Settings, topics: TopicStore, records: DeliveryLog,
                 secrets: SubscriptionSecrets, purge: Callable[[str], Awaitable[None]], directory: Directory,
                 resolve: Resolve = system_resolve, clock: Callable[[], float] = time.time) -> None:
        self.topo = topo
        self.settings = settings
        self.topics = topics
        self.records = records
        self.secrets = secrets
        self.purge = purge  # drops the pending deliveries on a subject of TM_DELIVERIES
        self.directory = directory  # who asks (the users of tm_users, followed)
        self.resolve = resolve
        self.clock = clock

    def register(self, broker: NatsBroker) -> None:
        handlers: dict[str, tuple[type, Verb]] = {
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
            responder(broker, self.topo.topics(verb), QUEUE,
                      self._serve(broker, parse, fn, AUDITED.get(verb)))

    def _serve(self, broker: NatsBroker, parse: Callable[[bytes], Any], fn: Verb,
               action: str | None) -> Callable[[NatsMessage], Awaitable[bytes]]:
        """The verb's answer to ``msg``, asked as the caller its headers name (unknown or revoked
        credentials: ``unauthorized``); an audited verb's outcome recorded on the audit trail."""

        async def serve(msg: NatsMessage) -> bytes:
            caller: Caller | None = None
            project = await self._project_of(action, msg.body) if action else audit.CLUSTER
            try:
                caller = self.directory.caller(msg.headers)
            except Denied as refusal:
                reply = denied_reply(refusal)
            else:
                reply = await self._answer(parse, fn, msg.body, caller)
            if action:
                actor = caller.actor if caller is not None else audit.actor_of(msg.headers)
                await self._audit(broker, msg, reply, action, actor, project)
            return reply

        return serve

    async def _project_of(self, action: str, body: bytes) -> str:
        """The project an audited request is about: the new topic's, or the named topic's as it
        is before the request changes it (``@cluster`` for a topic that does not exist)."""
        loose = audit.loose_body(body)
        if action == "topic_create":
            return audit.project_of(loose.get("project", "default"))
        topic = loose.get("topic") or loose.get("name")
        if not isinstance(topic, str):
            return audit.CLUSTER
        found = await self.topics.get(topic)
        if found is not None:
            return audit.project_of(found[0].project)
        return audit.CLUSTER

    async def _audit(self, broker: NatsBroker, msg: NatsMessage, reply: bytes, action: str, actor: str,
                     project: str) -> None:
        """One entry: the topic and the subscription, never the signing secret."""
        body, answer = audit.loose_body(msg.body), audit.loose_body(reply)
        topic = body.get("topic") or body.get("name")
        subscription = body.get("subscription_id") or (answer.get("id") if "error" not in answer else None)
        detail = {"subscription": subscription} if isinstance(subscription, str) else {}
        entry = audit.entry(actor, action, project, topic if isinstance(topic, str) else "",
                            reason=audit.refusal_of(reply), detail=detail)
        await audit.record(broker, self.topo, entry, (msg.headers or {}).get(MSG_ID) or msg.correlation_id)

    @staticmethod
    async def _answer(parse: Callable[[bytes], Any], fn: Verb, body: bytes, caller: Caller) -> bytes:
        try:
            return encode(await fn(parse(body), caller))
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        except ApiProblem as p:
            details = [Violation(p.field, p.detail_code, str(p))] if p.field else []
            return error_reply(p.code, str(p), details)
        except Denied as refusal:
            return denied_reply(refusal)
        except kvstore.ChangeConflict as exc:
            return error_reply("conflict", f"{exc}; try again")

    # ------------------------------------------------------------------ verbs
    async def create(self, req: TopicCreate, caller: Caller) -> object:
        policy.check_create(caller, req.project)
        record = TopicRecord(name=req.name, description=req.description, created_at=self.clock(), project=req.project)
        if not await self.topics.create(record):
            raise ApiProblem("conflict", f"topic {req.name!r} exists already", "name", "exists")
        return core.topic_view(record)

    async def list(self, _req: EmptyRequest, caller: Caller) -> object:
        return TopicList([core.topic_view(t) for t in policy.visible_topics(caller, await self.topics.all())])

    async def _readable(self, name: str, caller: Caller, what: str) -> TopicRecord:
        record, _ = await self.topics.require(name)
        policy.check_topic(caller, record, policy.READ, what, hidden=lambda: topic_missing(name))
        return record

    async def get(self, req: TopicRef, caller: Caller) -> object:
        return core.topic_view(await self._readable(req.name, caller, "reading a topic"))

    async def delete(self, req: TopicRef, caller: Caller) -> object:
        def check(current: TopicRecord) -> None:
            policy.check_topic(caller, current, policy.MANAGE, "deleting a topic",
                               hidden=lambda: topic_missing(req.name))
            core.check_delete(current, req.force)

        record = await self.topics.remove(req.name, check)
        for sub in record.subscriptions:
            await self.purge(self.topo.notify_deliver(req.name, sub.id))
        return {"deleted": req.name, "subscriptions_removed": len(record.subscriptions)}

    async def subscribe(self, req: SubscribeRequest, caller: Caller) -> object:
        def allowed(topic: TopicRecord) -> None:
            policy.check_topic(caller, topic, policy.MANAGE, "subscribing to a topic", field_name="topic",
                               hidden=lambda: topic_missing(req.topic))

        allowed((await self.topics.require(req.topic))[0])
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

        def add(topic: TopicRecord) -> TopicRecord:
            allowed(topic)  # the topic as it is now (deleted and made again in another project meanwhile)
            return core.add_subscription(topic, stored)

        await self.topics.change(req.topic, add)
        return core.view(req.topic, sub, with_secret=True)

    async def unsubscribe(self, req: UnsubscribeRequest, caller: Caller) -> object:
        def remove(topic: TopicRecord) -> TopicRecord:
            policy.check_topic(caller, topic, policy.MANAGE, "unsubscribing from a topic", field_name="topic",
                               hidden=lambda: topic_missing(req.topic))
            return core.remove_subscription(topic, req.subscription_id)

        await self.topics.change(req.topic, remove)
        await self.purge(self.topo.notify_deliver(req.topic, req.subscription_id))
        return {"removed": req.subscription_id, "topic": req.topic}

    async def subscriptions(self, req: TopicRef, caller: Caller) -> object:
        record = await self._readable(req.name, caller, "reading a topic's subscriptions")
        return SubscriptionList(record.name, [core.view(record.name, s) for s in record.subscriptions])

    async def deliveries(self, req: DeliveriesRequest, caller: Caller) -> object:
        def missing() -> ApiProblem:
            return ApiProblem("not_found", f"no topic {req.topic!r} and no deliveries recorded for it", "topic")

        found = await self.topics.get(req.topic)
        if found is not None:
            policy.check_topic(caller, found[0], policy.READ, "reading a topic's deliveries", hidden=missing,
                               field_name="topic")
        elif not caller.cluster_admin:
            raise missing()  # the deliveries of a deleted topic: its project is not known any more
        items, total = await self.records.list(req.topic, req.dead, req.limit)
        if not items and found is None:
            raise missing()
        return DeliveryList(topic=req.topic, dead=req.dead, deliveries=items, total=total)
