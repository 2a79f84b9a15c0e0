"""Broker factory, provisioning of the declared topology, and the delivery policy of consumers.

Every durable consumer is declared in ``topology`` and subscribed here with manual acks, settled
by ``trainmaster.delivery_policy`` (the policy every consumer shares): success acks; ``Poison``
(cannot ever be handled) and an error on the last allowed delivery copy the message to
``<prefix>.dlq.<durable>`` and terminate it; any other error naks with the consumer's retry
delay, so at-least-once delivery is real and handlers must be idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats
import structlog
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsJWT, NatsMessage, NatsSecurity, PullSub
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, KeyValueConfig, StreamConfig
from nats.js.errors import (
    BucketNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)
from opentelemetry.sdk.trace import TracerProvider

from trainmaster.access import Denied
from trainmaster.auth.credentials import connect_options, inbox_options
from trainmaster.delivery_policy import DLQ_PUBLISH_TIMEOUT_S, MSG_ID, Publish, Settler
from trainmaster.delivery_policy import ERROR_HEADER as ERROR_HEADER
from trainmaster.delivery_policy import Poison as Poison
from trainmaster.limits import bounded_error
from trainmaster.messages import ErrorBody, ErrorReply, Violation, encode
from trainmaster.settings import Settings
from trainmaster.topology import BucketSpec, ConsumerSpec, StreamSpec, Topology

log = structlog.get_logger()

# what decoding a bad body raises: msgspec's errors (ValidationError is a DecodeError), and
# UnicodeDecodeError for bytes that are not UTF-8 inside a JSON string (msgspec does not wrap it)
UNDECODABLE: tuple[type[Exception], ...] = (msgspec.DecodeError, UnicodeDecodeError)


# what a request to the server raises while it cannot answer for a moment: a cluster electing a
# new leader after losing a server (503s, no responders, timeouts for 5-6 s), or the one server
# restarting (the client reconnecting).  A loop that meets one waits and tries again.
TRANSIENT_BUS_ERRORS: tuple[type[Exception], ...] = (
    TimeoutError, nats_errors.TimeoutError, nats_errors.NoRespondersError, nats_errors.ConnectionClosedError,
    nats_errors.ConnectionReconnectingError, nats_errors.StaleConnectionError, nats_errors.OutboundBufferLimitError,
    ServiceUnavailableError, ServerError, NoStreamResponseError,
)


def make_broker(service: str, settings: Settings, tracer_provider: TracerProvider | None = None,
                inbox_prefix: str | None = None) -> NatsBroker:
    middlewares = [NatsTelemetryMiddleware(tracer_provider=tracer_provider)] if tracer_provider else []
    # replies (JetStream API, publish acks) come to inboxes under this prefix: a process allowed
    # to subscribe only to its own inboxes (an agent) cannot read the replies meant for others
    inbox = {"inbox_prefix": inbox_prefix} if inbox_prefix else {}
    return NatsBroker(
        servers=[s.strip() for s in settings.bus.nats_url.split(",") if s.strip()],
        name=f"trainmaster-{service}",
        middlewares=middlewares,
        # a restarted nats-server (same port, same store) is found again however long it took
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        # what a stop may wait on in-flight handlers and on draining the connection: faststream's
        # defaults (15 s, 30 s) made a stop while nats-server went away take half a minute
        graceful_timeout=settings.bus.shutdown_grace_s / 2,
        drain_timeout=max(1, int(settings.bus.shutdown_grace_s / 2)),
        log_level=10,  # faststream's own per-message lines at DEBUG
        security=broker_security(settings),
        **inbox,
    )


def broker_security(settings: Settings) -> NatsSecurity | None:
    """This process's credentials and the servers' CA, the way FastStream takes them."""
    options = connect_options(settings.bus.nats_creds, settings.bus.nats_ca_file)
    tls = {"ssl_context": options.get("tls"), "tls_handshake_first": options.get("tls_handshake_first", False)}
    if "user_jwt_cb" in options:
        return NatsJWT(options["user_jwt_cb"], options["signature_cb"], **tls)
    if "tls" in options:
        return NatsSecurity(**tls)
    return None


async def connect(settings: Settings, **options: Any) -> NATS:
    """A plain nats-py connection to the configured servers, with this process's credentials
    (and the servers' CA)."""
    servers = [s.strip() for s in settings.bus.nats_url.split(",") if s.strip()]
    return await nats.connect(servers, **connect_options(settings.bus.nats_creds, settings.bus.nats_ca_file),
                              **{**inbox_options(settings.bus.nats_creds), **options})


# ------------------------------------------------------------------------- provisioning
def stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=spec.retention,
        max_age=spec.max_age_s or None,
        max_bytes=spec.max_bytes,
        max_msg_size=spec.max_msg_size,
        duplicate_window=spec.duplicate_window_s,
        discard=spec.discard,
        storage=spec.storage,
        num_replicas=replicas,
        allow_direct=spec.allow_direct,
        deny_delete=spec.deny_delete,
        deny_purge=spec.deny_purge,
    )


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    return ConsumerConfig(
        # the name makes nats-py create it on $JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>:
        # a subject that credentials can grant for one filter only (an agent: its own commands)
        name=spec.durable,
        durable_name=spec.durable,
        filter_subject=spec.filter_subject,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, replicas: int) -> None:
    config = stream_config(spec, replicas)
    try:
        await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


async def ensure_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int) -> None:
    try:
        await js.key_value(spec.name)
    except BucketNotFoundError:
        await js.create_key_value(
            KeyValueConfig(
                bucket=spec.name,
                history=spec.history,
                ttl=spec.ttl_s,
                replicas=replicas,
                description=spec.description,
            )
        )


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    await js.add_consumer(spec.stream, consumer_config(spec))


async def provision_when_ready(js: JetStreamContext, topo: Topology, patience_s: float = 60.0) -> None:
    """``provision``, tried again while the server cannot answer for a moment (a service started
    during a cluster fail-over would otherwise exit, be restarted, and exit again)."""
    deadline = asyncio.get_running_loop().time() + patience_s
    while True:
        try:
            await provision(js, topo)
            return
        except TRANSIENT_BUS_ERRORS as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("provisioning the topology failed; trying again", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)


async def wait_for_streams(js: JetStreamContext, streams: list[str], interval_s: float = 1.0,
                           note_every_s: float = 10.0) -> None:
    """Wait until every stream of ``streams`` exists: for a process that may not provision the
    topology itself (an agent) and starts before the services did it."""
    loop = asyncio.get_running_loop()
    noted = loop.time()
    for name in streams:
        while True:
            try:
                await js.stream_info(name)
                break
            except (NotFoundError, *TRANSIENT_BUS_ERRORS) as exc:
                if loop.time() - noted >= note_every_s:
                    noted = loop.time()
                    log.warning("waiting for the services to provision the topology", stream=name,
                                error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(interval_s)


async def provision(js: JetStreamContext, topo: Topology) -> None:
    """Create or update every stream, bucket and fixed consumer of the topology (idempotent)."""
    for stream in topo.streams:
        await ensure_stream(js, stream, topo.replicas)
    for bucket in topo.buckets:
        await ensure_bucket(js, bucket, topo.replicas)
    for consumer in topo.consumers:
        await ensure_consumer(js, consumer)


# ------------------------------------------------------------------------- consumers
Handler = Callable[[NatsMessage], Awaitable[None]]


def raw_body(msg: NatsMessage) -> bytes:
    """faststream's decoder for every subscriber here: the bytes as they came.  Handlers decode
    ``msg.body`` themselves (typed, bounded: trainmaster.decoding); faststream's own decoder
    would ``json.loads`` each body first, and a body nested 100,000 levels deep raises
    RecursionError there, before any handler runs: no reply to a request, and a JetStream
    message left unacked, redelivered until it runs out of deliveries, never dead-lettered."""
    return msg.body


def dlq_publisher(broker: NatsBroker, stream: str, timeout: float = DLQ_PUBLISH_TIMEOUT_S) -> Publish:
    """Dead letters published through the broker (its middlewares: a traced message's dead letter
    stays in its trace)."""

    async def publish(subject: str, body: bytes, headers: dict[str, str]) -> None:
        await broker.publish(body, subject, headers=headers, stream=stream, timeout=timeout)

    return publish


def durable_subscriber(broker: NatsBroker, topo: Topology, spec: ConsumerSpec, handle: Handler,
                       inbox_prefix: str | None = None) -> None:
    """Subscribe ``handle`` to the durable pull consumer ``spec`` with its delivery policy.
    ``inbox_prefix``: the connection's own (faststream fetches into ``_INBOX.`` otherwise)."""
    settler = Settler(spec, topo.dlq(spec.durable), dlq_publisher(broker, topo.stream_dlq.name))
    inbox = {"inbox_prefix": f"{inbox_prefix}.".encode()} if inbox_prefix else {}

    @broker.subscriber(
        spec.filter_subject,
        stream=JStream(spec.stream, declare=False),
        durable=spec.durable,
        config=consumer_config(spec),
        pull_sub=PullSub(batch_size=spec.batch_size, timeout=5.0),
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_body,
        title=spec.durable,
        **inbox,
    )
    async def _consume(body: Any, msg: NatsMessage) -> None:  # raw bytes are in msg.body
        # settled on the nats-py message: faststream's own ack/nack/reject skip a settled one
        await settler.run(msg.raw_message, lambda: handle(msg))


# ------------------------------------------------------------------------- request/reply
def error_reply(code: str, message: str, details: list[Violation] | None = None, job=None) -> bytes:
    """The one error shape; message and details bounded so that the reply fits the payload limit."""
    return encode(ErrorReply(error=bounded_error(ErrorBody(code=code, message=message, details=details or [])),
                             job=job))


def denied_reply(refusal: Denied) -> bytes:
    """The error reply to a caller without the identity (``unauthorized``) or the role
    (``forbidden``) a request takes."""
    return error_reply(refusal.code, refusal.message, [Violation(refusal.field, refusal.code, refusal.message)])


Responder = Callable[[NatsMessage], Awaitable[bytes]]


def responder(broker: NatsBroker, subject: str, queue: str, handle: Responder) -> None:
    """A request/reply endpoint in a queue group.  It always answers: an unexpected error becomes
    an ``internal`` error reply instead of leaving the caller to time out."""

    @broker.subscriber(subject, queue=queue, decoder=raw_body, title=subject)
    async def _answer(body: Any, msg: NatsMessage) -> bytes:
        try:
            return await handle(msg)
        except Exception as exc:
            log.exception("request handler failed", subject=subject)
            return error_reply("internal", f"internal error: {type(exc).__name__}: {exc}")


async def publish_js(
    broker: NatsBroker, subject: str, body: bytes, *, stream: str, msg_id: str | None = None,
    headers: dict[str, str] | None = None, timeout: float = 10.0,
) -> None:
    """A JetStream publish that awaits the ack; ``msg_id`` makes a retried publish a no-op."""
    hdrs = dict(headers or {})
    if msg_id:
        hdrs[MSG_ID] = msg_id
    await broker.publish(body, subject, headers=hdrs, stream=stream, timeout=timeout)


DIRECT_GET_MAX_SUBJECTS = 1024  # the server's limit on ``multi_last`` subjects in one request


async def last_message_ids(nc: NATS, stream: str, subjects: list[str], timeout: float = 10.0) -> dict[str, str]:
    """The ``Nats-Msg-Id`` of the last message on each of ``subjects`` in ``stream`` (which must
    allow direct gets): one batched direct get per 1024 subjects instead of a request each.
    A subject without messages (or whose last message has no id) is left out."""
    found: dict[str, str] = {}
    for start in range(0, len(subjects), DIRECT_GET_MAX_SUBJECTS):
        chunk = subjects[start:start + DIRECT_GET_MAX_SUBJECTS]
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", msgspec.json.encode({"multi_last": chunk}), reply=inbox)
            while True:
                msg = await sub.next_msg(timeout=timeout)
                headers = msg.headers or {}
                if headers.get("Status"):  # 204 EOB ends the batch; 404: none of them has a message
                    if headers["Status"] not in ("204", "404"):
                        raise RuntimeError(f"direct get on {stream}: {headers['Status']} {dict(headers)}")
                    break
                if MSG_ID in headers and "Nats-Subject" in headers:
                    found[headers["Nats-Subject"]] = headers[MSG_ID]
        finally:
            await sub.unsubscribe()
    return found


async def fetch_batch(sub: JetStreamContext.PullSubscription, batch_size: int, durable: str) -> list[Msg]:
    """The next messages of a pull consumer, or none: a fetch that times out, or meets a server that
    cannot answer for a moment (a cluster fail-over, a restart), is not the end of a pull loop."""
    try:
        return await sub.fetch(batch_size, timeout=5.0)
    except (TimeoutError, nats_errors.TimeoutError):
        return []
    except TRANSIENT_BUS_ERRORS as exc:
        log.warning("fetch failed; trying again", consumer=durable, error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(1.0)
        return []
