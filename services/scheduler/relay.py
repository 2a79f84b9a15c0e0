"""The record relay: whatever a job record says happened is also announced, even when its writer
died between its compare-and-set and its publish.

Every writer (``JobStore.apply``/``create``) writes the record, then publishes the CloudEvent of
the new history entry and, for a new job, the validator's work item.  A crash between the two
steps used to lose the publish for good wherever no message redelivery repeats the work — the
scheduler's own decisions (placement impossible, agent lost, timed out), or job-intake, which on
a redelivered request finds the job stored and returns it.  Lost then were the terminal event
(no notification, no bill) or the validation (a job stuck in Initializing).

The relay follows the job bucket's own stream (every revision of every record) with a durable
consumer, so a revision is only acknowledged once its follow-ups are known to exist: after a
settle delay (the writer's own publish has normally landed by then), it reads the last event of
each job of a batch from the events stream (one batched direct get) and publishes what is
missing, in history order, under the same ``Nats-Msg-Id`` as the writer would have used (so a
late writer's publish is dropped as a duplicate), and re-publishes the validation work item of a
job still in Initializing.

The decisions are the pure functions at the top; ``RecordRelay`` reads and writes the bus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from trainmaster.bus import MSG_ID, fetch_batch, last_message_ids
from trainmaster.delivery_policy import Poison, Settler
from trainmaster.jobstore import JobStore
from trainmaster.messages import HistoryEntry, JobRecord, Status, WorkItem, encode
from trainmaster.topology import ConsumerSpec, Topology

log = structlog.get_logger()
_decode_record = msgspec.json.Decoder(JobRecord).decode


# ------------------------------------------------------------------------------ pure decisions
@dataclass(frozen=True)
class FollowUps:
    events: tuple[HistoryEntry, ...]  # to publish, oldest first
    validate: bool  # the validator's work item must exist


def event_seq(msg_id: str | None, job_id: str) -> int | None:
    """The history sequence number in a job event's ``Nats-Msg-Id`` (``<job id>.<seq>``)."""
    if not msg_id or not msg_id.startswith(f"{job_id}."):
        return None
    tail = msg_id[len(job_id) + 1:]
    return int(tail) if tail.isdigit() else None


def follow_ups(record: JobRecord, last_published_seq: int | None, now: float, horizon_s: float) -> FollowUps:
    """What must be published for ``record``, given the sequence number of the job's last event in
    the events stream (None: it has none).  Entries older than ``horizon_s`` are never announced:
    their events may have aged out of the stream, and a years-late "job failed" helps nobody."""
    newest_known = -1 if last_published_seq is None else last_published_seq
    missing = tuple(entry for entry in record.history
                    if entry.seq > newest_known and now - entry.at <= horizon_s)
    return FollowUps(events=missing, validate=record.status == Status.INITIALIZING)


def settle_deadline(written_at: float, settle_s: float) -> float:
    return written_at + settle_s


def latest_per_job(revisions: list[tuple[str, int, JobRecord]]) -> dict[str, JobRecord]:
    """The newest record of each job among ``(job id, stream sequence, record)``: an older revision's
    follow-ups are a prefix of the newest one's, so checking the newest covers them all."""
    newest: dict[str, tuple[int, JobRecord]] = {}
    for job_id, seq, record in revisions:
        if job_id not in newest or seq > newest[job_id][0]:
            newest[job_id] = (seq, record)
    return {job_id: record for job_id, (_, record) in newest.items()}


# ------------------------------------------------------------------------------ the adapter
class RecordRelay:
    def __init__(self, nc: NATS, topo: Topology, store: JobStore, *, settle_s: float,
                 horizon_s: float | None = None, clock: Callable[[], float] = time.time,
                 concurrency: int = 64) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.topo = topo
        self.store = store
        self.spec: ConsumerSpec = topo.consumer_record_relay
        self.settler = Settler.for_js(self.js, topo, self.spec)
        self.settle_s = settle_s
        # half the events' retention: an entry younger than that has its event in the stream if
        # it was ever published, so "missing" really means never published
        self.horizon_s = horizon_s if horizon_s is not None else topo.stream_events.max_age_s / 2
        self.clock = clock
        self.gate = asyncio.Semaphore(concurrency)
        self.published = 0  # events and work items this relay had to publish (its writers had not)

    async def run(self) -> None:
        sub = await self.js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream)
        while True:
            batch = await fetch_batch(sub, self.spec.batch_size, self.spec.durable)
            if batch:
                await self.relay_batch(batch)

    async def relay_batch(self, batch: list[Msg]) -> None:
        revisions: list[tuple[str, int, JobRecord]] = []
        by_job: dict[str, list[Msg]] = {}
        newest_write = 0.0
        for msg in batch:
            if not msg.data:  # a deleted or purged key: nothing to announce
                await msg.ack()
                continue
            try:
                record = _decode_record(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await self.settler.failed(msg, Poison(f"not a job record: {exc}"))
                continue
            seq = msg.metadata.sequence.stream if msg.metadata else 0
            revisions.append((record.id, seq, record))
            by_job.setdefault(record.id, []).append(msg)
            if msg.metadata and msg.metadata.timestamp:
                newest_write = max(newest_write, msg.metadata.timestamp.timestamp())
        if not revisions:
            return
        wait = settle_deadline(newest_write, self.settle_s) - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        latest = latest_per_job(revisions)
        try:
            last_ids = await last_message_ids(self.nc, self.topo.stream_events.name,
                                              [self.topo.job_events(job_id) for job_id in latest])
        except Exception as exc:
            await self._retry_later([m for ms in by_job.values() for m in ms], exc)
            return
        await asyncio.gather(*(
            self._settle(record, event_seq(last_ids.get(self.topo.job_events(job_id)), job_id), by_job[job_id])
            for job_id, record in latest.items()))

    async def _settle(self, record: JobRecord, last_seq: int | None, messages: list[Msg]) -> None:
        async with self.gate:
            try:
                await self.relay(record, last_seq)
            except Exception as exc:
                await self._retry_later(messages, exc, job_id=record.id)
                return
            await asyncio.gather(*(m.ack() for m in messages))

    async def _retry_later(self, messages: list[Msg], exc: Exception, job_id: str | None = None) -> None:
        # the revisions of a job stand or fall together (the consumer's max_deliver is unlimited:
        # a nak with its retry delay)
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            await self.settler.failed_together(messages, exc)

    async def relay(self, record: JobRecord, last_seq: int | None) -> None:
        todo = follow_ups(record, last_seq, self.clock(), self.horizon_s)
        for entry in todo.events:
            await self.store.publish_event(record, entry)
        if todo.events:
            self.published += len(todo.events)
            log.warning("published job events its writer had not", job_id=record.id,
                        events=[f"{record.id}.{e.seq}" for e in todo.events])
        if todo.validate and await self._still_initializing(record.id):
            # the id job-intake publishes it under: a duplicate within the window is dropped, and
            # a validator that finds the job validated already does nothing
            ack = await self.js.publish(self.topo.work_validate, encode(WorkItem(record.id)),
                                        stream=self.topo.stream_work.name, timeout=10.0,
                                        headers={MSG_ID: f"{record.id}.validate"})
            if not ack.duplicate:
                self.published += 1
                log.warning("published the validation its writer had not", job_id=record.id)

    async def _still_initializing(self, job_id: str) -> bool:
        """The revision at hand may be old news: the stored record decides."""
        current = await self.store.find(job_id)
        return current is not None and current.status == Status.INITIALIZING
