"""What happens to a consumed JetStream message once its handler ran: written once, for every
durable consumer (faststream subscribers, the scheduler's plain pull loops, the record relay, the
notifier's sender).

- ``decide`` (pure): the handler's outcome, the delivery count and the ``ConsumerSpec`` ->
  ack | nak(delay) | dead-letter.  Success acks; ``Poison`` (can never be handled) is
  dead-lettered at once; any other error naks with the consumer's retry delay, and on the last
  allowed delivery is dead-lettered instead (a nak there would never come back).
- ``Settler``: does it to a nats-py ``Msg``.  A dead letter is a copy on ``<prefix>.dlq.<durable>``
  with the error and where it came from in headers, then the original is terminated.  When the
  copy cannot be published the original is nak'ed with the retry delay instead: terminating it
  then would lose the message.  A faststream ``NatsMessage`` is settled through its
  ``raw_message`` (the nats-py message faststream itself acks; its own ack/nack/reject skip a
  message already settled), so both kinds of consumer share this one adapter.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from trainmaster.topology import ConsumerSpec, Topology

log = structlog.get_logger()

MSG_ID = "Nats-Msg-Id"
ERROR_HEADER = "Tm-Error"
ORIGINAL_SUBJECT_HEADER = "Tm-Original-Subject"
CONSUMER_HEADER = "Tm-Consumer"
ORIGINAL_SEQUENCE_HEADER = "Tm-Original-Sequence"

MAX_ERROR_CHARS = 1000  # the error header is for people: the start of a long error says enough
FALLBACK_RETRY_S = 1.0  # a consumer that declares no retry delays (its handler picks its own)
DLQ_PUBLISH_TIMEOUT_S = 10.0  # long enough to ride out a stream leader election (5-6 s)


class Poison(Exception):
    """The message can never be handled (undecodable, wrong shape): dead-letter it at once."""


class Outcome(enum.StrEnum):
    OK = "ok"
    POISON = "poison"
    ERROR = "error"  # any other failure: it may work on a later delivery


class Action(enum.StrEnum):
    ACK = "ack"
    NAK = "nak"
    DEAD_LETTER = "dead-letter"


@dataclass(frozen=True)
class Settlement:
    action: Action
    # NAK: the redelivery delay.  DEAD_LETTER: the nak delay should the dead letter's publish
    # fail.  ACK: None.
    delay_s: float | None = None


# ------------------------------------------------------------------------------ pure decisions
def unlimited(spec: ConsumerSpec) -> bool:
    """JetStream's ``max_deliver`` of -1 (or 0): redelivered for ever."""
    return spec.max_deliver <= 0


def retry_delay(spec: ConsumerSpec, delivered: int) -> float:
    """The delay before the delivery after ``delivered`` (1-based); the last value repeats."""
    delays = spec.retry_delays_s
    if not delays:
        return FALLBACK_RETRY_S
    return delays[min(max(delivered, 1) - 1, len(delays) - 1)]


def outcome_of(exc: BaseException | None) -> Outcome:
    if exc is None:
        return Outcome.OK
    return Outcome.POISON if isinstance(exc, Poison) else Outcome.ERROR


def decide(outcome: Outcome, delivered: int, spec: ConsumerSpec) -> Settlement:
    if outcome is Outcome.OK:
        return Settlement(Action.ACK)
    delay = retry_delay(spec, delivered)
    if outcome is Outcome.POISON or (not unlimited(spec) and delivered >= spec.max_deliver):
        return Settlement(Action.DEAD_LETTER, delay)
    return Settlement(Action.NAK, delay)


def describe(exc: BaseException) -> str:
    """The ``Tm-Error`` text of a failure."""
    return f"poison: {exc}" if isinstance(exc, Poison) else f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------ the adapter
def delivery_count(msg: Msg) -> int:
    return msg.metadata.num_delivered if msg.metadata else 1


def dead_letter_headers(spec: ConsumerSpec, msg: Msg, error: str) -> dict[str, str]:
    headers = {
        ERROR_HEADER: error[:MAX_ERROR_CHARS],
        ORIGINAL_SUBJECT_HEADER: msg.subject,
        CONSUMER_HEADER: spec.durable,
    }
    if msg.metadata:
        seq = msg.metadata.sequence.stream
        headers[ORIGINAL_SEQUENCE_HEADER] = str(seq)
        # a redelivered message that is dead-lettered twice (the first term was lost) is one letter
        headers[MSG_ID] = f"{spec.durable}:{seq}"
    return headers


# subject, body, headers -> the JetStream publish of a dead letter (ack awaited)
Publish = Callable[[str, bytes, dict[str, str]], Awaitable[object]]


def js_publisher(js: JetStreamContext, stream: str, timeout: float = DLQ_PUBLISH_TIMEOUT_S) -> Publish:
    async def publish(subject: str, body: bytes, headers: dict[str, str]) -> object:
        return await js.publish(subject, body, stream=stream, headers=headers, timeout=timeout)

    return publish


class Settler:
    """Settles the messages of one durable consumer by ``decide``."""

    def __init__(self, spec: ConsumerSpec, dlq_subject: str, publish: Publish) -> None:
        self.spec = spec
        self.dlq_subject = dlq_subject
        self.publish = publish

    @classmethod
    def for_js(cls, js: JetStreamContext, topo: Topology, spec: ConsumerSpec) -> Settler:
        return cls(spec, topo.dlq(spec.durable), js_publisher(js, topo.stream_dlq.name))

    async def run(self, msg: Msg, handle: Callable[[], Awaitable[None]]) -> None:
        """Run the handler of ``msg`` and settle the message by its outcome."""
        try:
            await handle()
        except Exception as exc:
            await self.failed(msg, exc)
        else:
            await msg.ack()

    async def failed(self, msg: Msg, exc: Exception) -> None:
        """Settle ``msg`` after its handler raised ``exc``."""
        await self.failed_together([msg], exc)

    async def failed_together(self, messages: list[Msg], exc: Exception) -> None:
        """Settle messages handled as one (a batch that failed as a whole): decided once, by the
        most delivered of them, and logged once."""
        if not messages:
            return
        delivered = max(delivery_count(m) for m in messages)
        settlement = decide(outcome_of(exc), delivered, self.spec)
        error = describe(exc)
        delay = settlement.delay_s if settlement.delay_s is not None else retry_delay(self.spec, delivered)
        if settlement.action is Action.NAK:
            log.warning("handler failed; will retry", consumer=self.spec.durable, delivered=delivered,
                        messages=len(messages), retry_in_s=delay, error=error)
            results = await asyncio.gather(*(m.nak(delay=delay) for m in messages), return_exceptions=True)
        else:
            if not isinstance(exc, Poison):
                log.error("handler failed on the last delivery", consumer=self.spec.durable, delivered=delivered,
                          exc_info=exc)
            results = await asyncio.gather(*(self.dead_letter(m, error, delay) for m in messages),
                                           return_exceptions=True)
        # a nak or term that could not be sent (the connection went away) loses nothing: the server
        # delivers the message again after its ack wait.  The consumer's loop goes on.
        unsent = [r for r in results if isinstance(r, BaseException)]
        if unsent:
            log.warning("could not settle; the server delivers again after the ack wait",
                        consumer=self.spec.durable, messages=len(unsent),
                        error=f"{type(unsent[0]).__name__}: {unsent[0]}")

    async def dead_letter(self, msg: Msg, error: str, retry_in_s: float) -> bool:
        """Copy ``msg`` to the consumer's dead-letter subject, then terminate it.  When the copy
        fails the message is nak'ed with ``retry_in_s`` and False returned: it comes again, or,
        past ``max_deliver``, stays in its stream (the server's max-deliveries advisory names it)
        instead of being lost."""
        try:
            await self.publish(self.dlq_subject, msg.data, dead_letter_headers(self.spec, msg, error))
        except Exception as exc:
            log.warning("dead-letter publish failed; the message will come again", consumer=self.spec.durable,
                        retry_in_s=retry_in_s, error=f"{type(exc).__name__}: {exc}")
            await msg.nak(delay=retry_in_s)
            return False
        log.error("message dead-lettered", consumer=self.spec.durable, error=error)
        await msg.term()
        return True
