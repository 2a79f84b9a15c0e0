"""notifier: fans job events out to the subscriptions of the job's topic and delivers them as
signed webhooks (Standard Webhooks, CloudEvents body) or email; answers the topics API.

Three parts share one process:
- fan-out: the durable ``notifier`` on ``tm.events.job.*``: a status change a job subscribed to
  becomes one task per active subscription of its topic on ``tm.notify.deliver.<topic>.<sub>``
  (``Nats-Msg-Id`` = ``<event id>:<subscription id>``: a redelivered event adds nothing); the event
  is acked once every task is stored.
- sending: ``delivery.Deliverer`` on the durable ``notifier-deliver``.
- the topics API: ``api.TopicsApi`` on ``tm.topics.<verb>``, each request asked as the caller the
  users directory (``tm_users``, followed) names.

Webhook signing secrets are stored encrypted (``sealing``, keys from ``TM_SECRETS_KEY_FILE``, without
which the notifier does not start); at start every secret still in plain text or under an older key
is re-encrypted under the key file's first key.
"""

from __future__ import annotations

import time

import msgspec
import structlog
from faststream.nats import NatsMessage
from nats.js.errors import NotFoundError

from services.notifier.api import TopicsApi
from services.notifier.core import fan_out, fanout_msg_id, subscription_event, wanted
from services.notifier.delivery import Deliverer, stop_quietly
from services.notifier.sealing import SubscriptionSecrets
from services.notifier.senders import EmailSender, WebhookSender
from services.notifier.store import DeliveryLog, TopicStore
from trainmaster.bus import MSG_ID, UNDECODABLE, Poison, durable_subscriber
from trainmaster.identity import Directory
from trainmaster.jobstore import JobStore
from trainmaster.messages import JobCloudEvent, encode
from trainmaster.pubacks import PubAcks
from trainmaster.secretbox import KeyringError
from trainmaster.service import ServiceContext

log = structlog.get_logger()
_decode_event = msgspec.json.Decoder(JobCloudEvent).decode


class _RawData(msgspec.Struct):
    data: msgspec.Raw  # the event's data exactly as published (fields this version does not know kept)


_decode_raw = msgspec.json.Decoder(_RawData).decode


async def setup(ctx: ServiceContext) -> None:
    settings, topo, js = ctx.settings, ctx.topo, ctx.js
    try:
        secrets = SubscriptionSecrets.from_settings(settings.notifier)
    except KeyringError as exc:
        log.error("cannot start: the webhook signing secrets' key file is not usable", error=str(exc))
        raise SystemExit(2) from None
    nc = ctx.broker.config.connection_state.connection
    store = await JobStore(ctx.broker, topo, source="notifier").open()
    topics = await TopicStore(js, topo).open()
    await secrets.reseal_stored(topics)
    records = await DeliveryLog(nc, js, topo).open()
    webhooks = await WebhookSender(settings).start()
    fanout = await PubAcks(nc).start()
    deliverer = Deliverer(js, topo, settings, topics, records, webhooks, EmailSender(settings), secrets, nc=nc)
    await deliverer.declare()

    async def purge(subject: str) -> None:
        try:
            await js.purge_stream(topo.stream_deliveries.name, subject=subject)
        except NotFoundError:
            pass

    directory = await Directory(await js.key_value(topo.bucket_users.name)).start()  # who asks, and their roles
    ctx.background(directory.follow(), "users")
    TopicsApi(topo, settings, topics, records, secrets, purge, directory).register(ctx.broker)

    async def on_event(msg: NatsMessage) -> None:
        try:
            event = _decode_event(msg.body)
            raw = _decode_raw(msg.body).data
        except UNDECODABLE as exc:
            raise Poison(str(exc)) from exc
        name = subscription_event(event.data.status, event.data.previous_status)
        if name is None:
            return
        with structlog.contextvars.bound_contextvars(job_id=event.data.job_id):
            record = await store.find(event.data.job_id)
            topic_name = wanted(record, name) if record else None
            if not topic_name:
                return
            found = await topics.get(topic_name)
            if found is None:
                log.warning("job subscribed to a topic that does not exist; nothing sent", topic=topic_name,
                            event_id=event.id)
                return
            tasks = fan_out(event, raw, name, found[0], time.time())
            # all at once, then wait for every store ack: an error naks the event and the retry
            # re-publishes under the same ids (dropped by the server as duplicates)
            await fanout.store_all([(topo.notify_deliver(t.topic, t.subscription_id), encode(t),
                                     {MSG_ID: fanout_msg_id(t.event_id, t.subscription_id)}) for t in tasks],
                                   settings.bus.publish_timeout_s)
            log.info("notification fanned out", event_id=event.id, subscription_event=name, topic=topic_name,
                     deliveries=len(tasks))

    durable_subscriber(ctx.broker, topo, topo.consumer_notifier, on_event)
    ctx.background(topics.follow(), "topics-watch")
    ctx.background(deliverer.run(), "deliveries")

    async def stop() -> None:
        await stop_quietly(deliverer, timeout_s=5.0)
        await webhooks.close()

    ctx.on_stop.append(stop)
