"""The sender: pulls delivery tasks from ``TM_DELIVERIES`` and sends many at once.

- Concurrency: the loop fetches only as many messages as it has free slots
  (``TM_NOTIFY_MAX_IN_FLIGHT``), so a fetched message starts at once and its ack wait is spent
  sending, not queueing.  When busy it waits (at most ``REFILL_WAIT_S``) for a quarter of the
  slots to be free, so one fetch brings many tasks.  One subscription gets at most
  ``TM_NOTIFY_MAX_IN_FLIGHT_PER_SUBSCRIPTION`` of those slots; a task for a subscription at its
  limit is handed back (nak, ~1 s) without counting as an attempt, so a slow or dead endpoint
  cannot take the slots the others need.
- Attempts are counted in the delivery record (``tm_deliveries``), read only on a redelivery:
  a notifier killed mid-send sends again with the same attempt number and the same webhook-id.
- After an attempt: 2xx -> record ``delivered``, ack.  Retryable -> record ``retrying`` with the
  next attempt's time, nak with the schedule's delay.  410 -> disable the subscription, ack.
  Schedule used up (or an SMTP 5xx) -> record ``dead`` and a dead letter with the body, ack.
  The record is stored before the ack/nak (except a success's, which nothing depends on).
- Successes are settled in batches: their records and acks are published together every
  ``SETTLE_BATCH_S`` (2 ms), so the connection writes one buffer for many deliveries instead
  of one per delivery.  A notifier killed in between sends those again (same webhook-id): the
  at-least-once window grows by those milliseconds, nothing else changes.
- An undecodable task is poison: dead-lettered to ``<prefix>.dlq.notifier-deliver`` and
  terminated by the delivery policy every consumer shares (``trainmaster.delivery_policy``),
  nak'ed instead when that dead letter cannot be published.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.notifier.core import times_delivered
from services.notifier.mail import render_email
from services.notifier.puller import Puller
from services.notifier.retry import AttemptResult, Decision, Verdict, decide
from services.notifier.sealing import SubscriptionSecrets
from services.notifier.senders import EmailSender, WebhookSender
from services.notifier.store import DeliveryLog, TopicStore
from services.notifier.topics import disable_subscription
from trainmaster.bus import TRANSIENT_BUS_ERRORS, UNDECODABLE, consumer_config
from trainmaster.delivery_policy import Poison, Settler
from trainmaster.messages import DeadLetter, DeliveryRecord, DeliveryTask, JobCloudEvent, TopicSubscription
from trainmaster.secretbox import SecretBoxError
from trainmaster.settings import Settings
from trainmaster.topology import ConsumerSpec, Topology

log = structlog.get_logger()
_decode_task = msgspec.json.Decoder(DeliveryTask).decode
_decode_event = msgspec.json.Decoder(JobCloudEvent).decode

POISON_DELIVERIES = 1000  # a task redelivered this often (e.g. it kills the process) is dead-lettered
DEFER_S = 1.0  # how long a task for a subscription at its in-flight limit waits before coming back
REFILL_WAIT_S = 0.02  # the longest the fetching waits for a batch's worth of free slots
SETTLE_BATCH_S = 0.002  # how long a success's record and ack wait to be published with others


class Deliverer:
    def __init__(self, js: JetStreamContext, topo: Topology, settings: Settings, topics: TopicStore,
                 records: DeliveryLog, webhooks: WebhookSender, email: EmailSender, secrets: SubscriptionSecrets,
                 clock: Callable[[], float] = time.time, nc: NATS | None = None) -> None:
        self.js = js
        self.topo = topo
        self.spec: ConsumerSpec = topo.consumer_notify_deliver
        self.settler = Settler.for_js(js, topo, self.spec)
        self.settings = settings
        self.schedule = settings.notifier.webhook_retry_schedule_s
        self.topics = topics
        self.records = records
        self.webhooks = webhooks
        self.email = email
        self.secrets = secrets
        self.clock = clock
        self.busy: dict[str, int] = {}
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.nc = nc
        self.puller: Puller | None = None
        self.delivered: list[tuple[DeliveryRecord, Msg]] = []  # settled at the next batch
        self.settling: asyncio.Task[None] | None = None
        self.slots_freed = asyncio.Event()
        self.refill = 1  # free slots worth a fetch (set by run)

    async def declare(self) -> None:
        """Create or update the durable with ``ack_wait`` from the settings (see topology)."""
        config = consumer_config(self.spec)
        config.ack_wait = self.settings.notifier.notify_ack_wait_s
        await self.js.add_consumer(self.spec.stream, config)

    async def run(self) -> None:
        nc = self.nc if self.nc is not None else self.js._nc  # type: ignore[attr-defined]
        self.puller = puller = await Puller(nc, self.js, self.spec.stream, self.spec.durable,
                                            self._start).start()
        limit = self.settings.notifier.notify_max_in_flight
        self.refill = max(1, min(self.spec.batch_size, limit // 4))
        while not self.stopping:
            await puller.idle.wait()  # the open request brought what it could
            free = limit - len(self.in_flight)
            if free < self.refill:
                # one request for a batch's worth of free slots rather than one per finished task;
                # slots held by slow endpoints never stop the pulling for longer than REFILL_WAIT_S
                self.slots_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.slots_freed.wait(), REFILL_WAIT_S)
                free = limit - len(self.in_flight)
                if free <= 0:
                    continue
            if self.stopping:
                break
            try:
                await puller.request(min(free, self.spec.batch_size))
            except nats.errors.ConnectionClosedError:
                return
            except TRANSIENT_BUS_ERRORS as exc:  # a fail-over or a restarting server: try again shortly
                log.warning("pull request failed; trying again", consumer=self.spec.durable,
                            error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)

    def _start(self, msg: Msg) -> None:
        # pulled while stopping: straight back, for whoever runs next
        task = asyncio.ensure_future(self._hand_back(msg) if self.stopping else self.handle(msg))
        self.in_flight.add(task)
        task.add_done_callback(self._finished)

    @staticmethod
    async def _hand_back(msg: Msg) -> None:
        with contextlib.suppress(Exception):
            await msg.nak()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if self.settings.notifier.notify_max_in_flight - len(self.in_flight) >= self.refill:
            self.slots_freed.set()

    async def drain(self, timeout_s: float) -> None:
        """Stop fetching and let the deliveries in flight finish (what is cut off is redelivered)."""
        self.stopping = True
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=timeout_s)
        await self._settle_delivered()
        if self.puller is not None:
            with contextlib.suppress(Exception):
                await self.puller.stop()

    # ------------------------------------------------------------------ one delivery
    async def handle(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except Exception:
            # e.g. the bus went away while recording: the task comes back after the ack wait
            log.exception("delivery failed unexpectedly; it will be redelivered")

    async def _handle(self, msg: Msg) -> None:
        try:
            task = _decode_task(msg.data)
        except UNDECODABLE as exc:
            await self.settler.failed(msg, Poison(f"undecodable delivery task: {exc}"))
            return
        delivered = times_delivered(msg.reply)
        if delivered is None:
            delivered = msg.metadata.num_delivered if msg.metadata else 1
        sub = self.topics.cached_subscription(task.topic, task.subscription_id)
        if sub is None:
            sub = await self.topics.subscription(task.topic, task.subscription_id)
        if sub is None or sub.state != "active":
            why = "subscription removed" if sub is None else f"subscription {sub.state}"
            await self.records.record(self._record(task, sub, "skipped", 0, AttemptResult(Verdict.RETRY, None, why)))
            await msg.ack()
            return
        if delivered > POISON_DELIVERIES:
            result = AttemptResult(Verdict.PERMANENT, None, f"delivered {delivered} times")
            rec = self._record(task, sub, "dead", 0, result)
            await self._bury(rec, task)
            await msg.ack()
            return
        if self.busy.get(sub.id, 0) >= self.settings.notifier.notify_max_in_flight_per_subscription:
            await msg.nak(delay=DEFER_S * random.uniform(0.75, 1.5))
            return
        self.busy[sub.id] = self.busy.get(sub.id, 0) + 1
        try:
            key = self.records.key(task.topic, task.subscription_id, task.id)
            attempt_no = (await self.records.attempts(key) if delivered > 1 else 0) + 1
            if attempt_no > len(self.schedule):  # the schedule was shortened since
                result = AttemptResult(Verdict.PERMANENT, None, "retry schedule used up")
            else:
                result = await self._send(task, sub)
        finally:
            self.busy[sub.id] -= 1
            if not self.busy[sub.id]:
                del self.busy[sub.id]
        await self._settle(msg, task, sub, attempt_no, result)

    async def _send(self, task: DeliveryTask, sub: TopicSubscription) -> AttemptResult:
        if sub.protocol == "webhook":
            try:
                secret = self.secrets.reveal(task.topic, sub)
            except SecretBoxError as exc:  # e.g. its key was taken out of the key file: retried, then dead
                return AttemptResult(Verdict.RETRY, None, f"signing secret unavailable: {exc}")
            return await self.webhooks.send(sub.endpoint, secret, task.id, bytes(task.body), int(self.clock()))
        event = _decode_event(task.body)
        message = render_email(event, notification=task.notification, topic=task.topic, delivery_id=task.id,
                               sender=self.settings.notifier.smtp_from, to=sub.endpoint)
        return await self.email.send(message)

    async def _settle(self, msg: Msg, task: DeliveryTask, sub: TopicSubscription, attempt_no: int,
                      result: AttemptResult) -> None:
        now = self.clock()
        decision: Decision = decide(result, attempt_no, self.schedule, now)
        rec = self._record(task, sub, decision.state, attempt_no, result, decision.next_attempt_at)
        bound: dict[str, Any] = dict(delivery=task.id, topic=task.topic, subscription=sub.id, attempt=attempt_no,
                                     status=result.status, error=result.error)
        if decision.state == "delivered":
            self.delivered.append((rec, msg))
            if self.settling is None:
                self.settling = asyncio.ensure_future(self._settle_delivered(SETTLE_BATCH_S))
        elif decision.state == "retrying":
            await self.records.record(rec)
            log.info("delivery failed; will retry", retry_in_s=decision.retry_in_s, **bound)
            await msg.nak(delay=decision.retry_in_s)
        elif decision.state == "disabled":
            await self.topics.change(task.topic, lambda t: disable_subscription(
                t, sub.id, f"the endpoint answered {result.status}", now))
            await self.records.record(rec)
            log.warning("subscription disabled by its endpoint", **bound)
            await msg.ack()
        else:
            await self._bury(rec, task)
            log.error("delivery dead-lettered", **bound)
            await msg.ack()

    async def _settle_delivered(self, after_s: float = 0.0) -> None:
        """Publish the batch's records, then its acks (buffered by the client, written at once)."""
        if after_s:
            await asyncio.sleep(after_s)
        batch, self.delivered, self.settling = self.delivered, [], None
        try:
            for rec, _ in batch:
                await self.records.record(rec, wait=False)
            for _, msg in batch:
                await msg.ack()
        except Exception as exc:  # e.g. the connection went away: what is not acked comes back after the ack wait
            log.warning("settling delivered tasks failed; they will be sent again", deliveries=len(batch),
                        error=f"{type(exc).__name__}: {exc}")

    async def _bury(self, rec: DeliveryRecord, task: DeliveryTask) -> None:
        await self.records.record(rec)
        await self.records.dead_letter(DeadLetter(**msgspec.structs.asdict(rec), body=task.body))

    def _record(self, task: DeliveryTask, sub: TopicSubscription | None, state: str, attempts: int,
                result: AttemptResult, next_attempt_at: float | None = None) -> DeliveryRecord:
        return DeliveryRecord(
            id=task.id, topic=task.topic, subscription_id=task.subscription_id,
            protocol=sub.protocol if sub else "webhook", endpoint=sub.endpoint if sub else "",
            event_id=task.event_id, notification=task.notification, job_id=task.job_id, state=state,  # type: ignore[arg-type]
            attempts=attempts, created_at=task.created_at, updated_at=self.clock(), last_status=result.status,
            last_error=result.error, next_attempt_at=next_attempt_at,
        )


async def stop_quietly(deliverer: Deliverer, timeout_s: float) -> None:
    with contextlib.suppress(Exception):
        await deliverer.drain(timeout_s)
