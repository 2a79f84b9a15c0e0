"""``tm.jobs.events`` and ``tm.jobs.logs``: a job's stored events and log lines for whoever may see
the job (a viewer of its project), relayed to the request's reply subject from an ephemeral
consumer of the stream, one message each, then ``Tm-End`` (``trainmaster.jobfeed`` decides when
and with which headers).  People have no JetStream: this is how they read them.

Each request is served by a task of its own (a follow lasts up to the window): it reads in
batches, publishes a batch and flushes before reading the next, checks the caller again after
each, and sends keepalives while a follow is quiet, because nats-server forgets the route of a
streamed reply to another account after the export's response threshold (2 min) without a
message."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.job_intake.replies import QUEUE, Refused, denied, refused, rejected
from trainmaster import jobfeed
from trainmaster.access import Denied, Role, require
from trainmaster.bus import error_reply
from trainmaster.decoding import RequestError, decode_as
from trainmaster.identity import Directory
from trainmaster.jobfeed import EventsRequest, LogsRequest, Pace, Progress, Step
from trainmaster.jobstore import JobStore
from trainmaster.messages import Violation
from trainmaster.topology import Topology

log = structlog.get_logger()

BATCH = 256  # messages read, relayed and flushed at a time
IDLE_READ_S = 1.0  # the longest one read of a follow waits for a new message
CONSUMER_IDLE_S = 60.0  # the server drops a consumer this relay left behind (a crash) after this
EVENTS_SETTLE_S = 5.0  # a final job's last event comes from the record relay, a moment after the write


def no_job(job_id: str) -> Refused:
    """What a missing job answers, and a job the caller may not see (that it exists is not told)."""
    return refused("not_found", f"no job with id {job_id!r}",
                   [Violation("id", "not_found", "check the id with `trainmaster job list`")])


@dataclass(frozen=True)
class Feed:
    """One verb: its stream, the subject filter of a request, the headers of each relayed message,
    whether a message is the job's last."""

    stream: str
    pace: Pace
    subject: Callable[[EventsRequest | LogsRequest], str]
    headers: Callable[[Msg], dict[str, str]]
    ends: Callable[[Msg], bool]


@dataclass
class JobFeeds:
    nc: NATS
    js: JetStreamContext
    topo: Topology
    store: JobStore
    directory: Directory
    max_bytes: int
    pace: Pace
    batch: int = BATCH
    running: set[asyncio.Task] = field(default_factory=set)

    async def start(self) -> None:
        """Answer both verbs in job-intake's queue group."""
        events = Feed(self.topo.stream_events.name, Pace(self.pace.window_s, self.pace.keepalive_s, EVENTS_SETTLE_S),
                      lambda r: self.topo.job_events(r.id),
                      lambda m: jobfeed.event_headers(m.metadata.sequence.stream, m.headers),
                      lambda m: jobfeed.ends_job(m.headers))
        logs = Feed(self.topo.stream_logs.name, self.pace,
                    lambda r: self.topo.logs(r.id, "*" if getattr(r, "node", None) is None else str(r.node)),
                    lambda m: jobfeed.line_headers(m.metadata.sequence.stream, m.subject, m.headers),
                    lambda m: False)
        await self.nc.subscribe(self.topo.jobs("events"), queue=QUEUE, cb=self._spawn(events, EventsRequest))
        await self.nc.subscribe(self.topo.jobs("logs"), queue=QUEUE, cb=self._spawn(logs, LogsRequest))

    async def stop(self) -> None:
        """End every feed in progress (each tells its client to ask again: another replica answers)."""
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)

    def _spawn(self, feed: Feed, kind: type[EventsRequest] | type[LogsRequest]) -> Callable[[Msg], Awaitable[None]]:
        async def on_request(msg: Msg) -> None:
            if not msg.reply:
                return  # a feed goes to a reply subject only
            task = asyncio.ensure_future(self._serve(feed, kind, msg))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

        return on_request

    async def _serve(self, feed: Feed, kind: type[EventsRequest] | type[LogsRequest], msg: Msg) -> None:
        try:
            request = decode_as(msg.data, kind, self.max_bytes)
            with structlog.contextvars.bound_contextvars(job_id=request.id):
                account = await self._visible(msg.headers, request.id)
                await self._relay(feed, request, msg.reply, msg.headers, account)
        except RequestError as err:
            await self._close_with(msg.reply, rejected(err))
        except Refused as refusal:
            await self._close_with(msg.reply, refusal.reply)
        except Denied as refusal:
            await self._close_with(msg.reply, denied(refusal))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job feed failed", subject=msg.subject)
            await self._close_with(msg.reply, error_reply("internal", f"internal error: {type(exc).__name__}: {exc}"))

    async def _visible(self, headers: Mapping[str, str] | None, job_id: str) -> str:
        """The job's project, if the caller may see the job (a viewer of it); else ``not_found``."""
        caller = self.directory.caller(headers)  # an unknown or revoked key: unauthorized
        record = await self.store.find(job_id)
        if record is None:
            raise no_job(job_id)
        try:
            require(caller, record.spec.account, Role.VIEWER, "reading a job's events and logs")
        except Denied:
            raise no_job(job_id) from None
        return record.spec.account

    def _still_allowed(self, headers: Mapping[str, str] | None, job_id: str, account: str) -> None:
        """The caller's rights as they are now (revoked credentials, a role taken away)."""
        caller = self.directory.caller(headers)
        if not caller.may(account, Role.VIEWER):
            raise no_job(job_id)

    async def _relay(self, feed: Feed, request: EventsRequest | LogsRequest, reply: str,
                     headers: Mapping[str, str] | None, account: str) -> None:
        subject = feed.subject(request)
        start = request.after + 1
        tail = getattr(request, "tail", None)
        if tail is not None:
            start = await self._tail_start(feed.stream, subject, start, tail)
        consumer = await self._consumer(feed.stream, subject, start)
        clock = asyncio.get_running_loop().time
        started = clock()
        progress = Progress(follow=request.follow, started=started, now=started, last_sent=started)
        last_seq = start - 1
        sub = await self.js.pull_subscribe_bind(consumer=consumer, stream=feed.stream)
        try:
            while True:
                progress = replace(progress, now=clock())
                step = jobfeed.next_step(progress, feed.pace)
                if step in (Step.DONE, Step.MORE):
                    await self._close_with(reply, b"", jobfeed.end_headers(step, last_seq))
                    return
                if step is Step.KEEPALIVE:
                    await self.nc.publish(reply, b"", headers=jobfeed.keepalive_headers())
                    progress = replace(progress, last_sent=clock())
                    continue
                read_at = clock()
                wait = 1.0 if step is Step.READ else _idle_wait(progress, feed.pace)
                try:
                    batch = await sub.fetch(self.batch, timeout=wait)
                except TimeoutError:
                    batch = []
                ended = progress.ended
                for stored in batch:
                    await self.nc.publish(reply, stored.data, headers=feed.headers(stored))
                    last_seq = stored.metadata.sequence.stream
                    ended = ended or feed.ends(stored)
                if batch:
                    await self.nc.flush()
                    progress = replace(progress, last_sent=clock())
                caught_up = not batch or batch[-1].metadata.num_pending == 0
                progress = replace(progress, caught_up=caught_up, read_at=read_at, ended=ended)
                if (request.follow and caught_up and progress.final_at is None and not ended
                        and await self._ended(request.id)):
                    progress = replace(progress, final_at=clock())
                self._still_allowed(headers, request.id, account)
        except asyncio.CancelledError:
            # job-intake stops: the client asks again from here (another replica answers)
            await self._close_with(reply, b"", jobfeed.end_headers(Step.MORE, last_seq))
            raise
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(feed.stream, consumer)

    async def _ended(self, job_id: str) -> bool:
        record = await self.store.find(job_id)
        return record is None or record.status.terminal

    async def _consumer(self, stream: str, subject: str, start: int) -> str:
        """An ephemeral consumer of ``subject`` from sequence ``start``, read without acks."""
        config = ConsumerConfig(filter_subject=subject, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=start, ack_policy=AckPolicy.NONE, mem_storage=True,
                                inactive_threshold=CONSUMER_IDLE_S, num_replicas=1)
        info = await self.js.add_consumer(stream, config)
        return info.name

    async def _count_from(self, stream: str, subject: str, start: int) -> int:
        name = await self._consumer(stream, subject, start)
        try:
            return (await self.js.consumer_info(stream, name)).num_pending or 0
        finally:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(stream, name)

    async def _tail_start(self, stream: str, subject: str, start: int, tail: int) -> int:
        last = (await self.js.stream_info(stream)).state.last_seq
        return await jobfeed.tail_start(start, last + 1, tail,
                                        lambda seq: self._count_from(stream, subject, seq))

    async def _close_with(self, reply: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        with contextlib.suppress(Exception):
            await self.nc.publish(reply, body, headers=headers)
            await self.nc.flush()


def _idle_wait(p: Progress, pace: Pace) -> float:
    """How long a caught-up follow waits on its next read: up to the next keepalive or the window's
    end, and no longer than ``IDLE_READ_S`` (the job's end and the caller's rights are checked between)."""
    left = min(pace.keepalive_s - (p.now - p.last_sent), pace.window_s - (p.now - p.started), IDLE_READ_S)
    return max(left, 0.05)
