"""Pure core of the notifier: which subscription event a job event is, whether the job's
subscription asked for it, and the fan-out of one event to the subscriptions of a topic."""

from __future__ import annotations

import hashlib

import msgspec

from trainmaster.messages import (
    DeliveryTask,
    JobCloudEvent,
    JobRecord,
    Status,
    TopicRecord,
    TopicSubscription,
)

SUBSCRIPTION_EVENTS: dict[Status, str] = {
    Status.RUNNING: "OnJobRunning",
    Status.SUCCEEDED: "OnJobSucceeded",
    Status.FAILED: "OnJobFailed",
    Status.STOPPED: "OnJobStopped",
}


def subscription_event(status: Status, previous: Status | None) -> str | None:
    """The subscription event a status change raises (None when the status did not change)."""
    if status == previous:
        return None
    return SUBSCRIPTION_EVENTS.get(status)


def wanted(record: JobRecord, event_name: str) -> str | None:
    """The topic to notify when the job's subscription names ``event_name``."""
    sub = record.spec.subscription
    if sub is None or event_name not in sub.events:
        return None
    return sub.topic


def webhook_id(event_id: str, subscription_id: str) -> str:
    """The delivery's id: ``webhook-id`` header, CloudEvent ``id`` and delivery record key.

    Derived from (event, subscription) only, so it is the same on every retry, after a notifier
    restart and after a redelivered fan-out; and it differs per subscription, so two
    subscriptions that point at the same URL are two deliveries (a receiver that dedupes on it
    does not drop the second).  Hex keeps it a valid KV key token."""
    digest = hashlib.sha256(f"{event_id}\x00{subscription_id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def fanout_msg_id(event_id: str, subscription_id: str) -> str:
    """``Nats-Msg-Id`` of a delivery task: a redelivered job event fans out to nothing new."""
    return f"{event_id}:{subscription_id}"


class WebhookEvent(msgspec.Struct, frozen=True):
    """The body a webhook receives: the job's CloudEvent (type, source, subject, time, data) with
    ``id`` = the webhook-id, plus extension attributes naming what this delivery is."""

    id: str
    source: str
    type: str
    subject: str
    time: str
    data: msgspec.Raw
    tmeventid: str  # the job event's own id (<job id>.<n>)
    tmnotification: str  # OnJobRunning, OnJobSucceeded, OnJobFailed, OnJobStopped
    tmtopic: str
    tmsubscription: str
    specversion: str = "1.0"
    datacontenttype: str = "application/json"


_encode = msgspec.json.Encoder().encode


def webhook_body(event: JobCloudEvent, raw_data: msgspec.Raw, wid: str, notification: str, topic: str,
                 subscription_id: str) -> bytes:
    return _encode(WebhookEvent(
        id=wid, source=event.source, type=event.type, subject=event.subject, time=event.time, data=raw_data,
        tmeventid=event.id, tmnotification=notification, tmtopic=topic, tmsubscription=subscription_id,
    ))


def active_subscriptions(topic: TopicRecord) -> list[TopicSubscription]:
    return [s for s in topic.subscriptions if s.state == "active"]


def fan_out(event: JobCloudEvent, raw_data: msgspec.Raw, notification: str, topic: TopicRecord,
            now: float) -> list[DeliveryTask]:
    """One delivery task per active subscription of ``topic`` (disabled ones get nothing)."""
    return [
        DeliveryTask(
            id=(wid := webhook_id(event.id, sub.id)), topic=topic.name, subscription_id=sub.id,
            event_id=event.id, notification=notification, job_id=event.data.job_id, created_at=now,
            body=msgspec.Raw(webhook_body(event, raw_data, wid, notification, topic.name, sub.id)),
        )
        for sub in active_subscriptions(topic)
    ]


def times_delivered(reply: str | None) -> int | None:
    """How often JetStream has handed this message out, read from its ack subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>...``, 9 tokens, or the 12-token form with domain and
    account hash); None when the subject is not one of those.  Cheaper than nats-py's
    ``Msg.metadata``, which builds every field, on a path taken once per delivery."""
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    field = 4 if len(tokens) == 9 else 6 if len(tokens) >= 11 else None
    if field is None or not tokens[field].isdigit():
        return None
    return int(tokens[field])
