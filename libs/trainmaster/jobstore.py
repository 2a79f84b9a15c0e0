"""The job record store: JetStream KV, written only through the state machine.

``apply`` is the one write path: read at a revision, ``statemachine.transition``, update at that
revision (compare-and-set), then publish the CloudEvent with ``Nats-Msg-Id`` = the event id, so
a retried publish is dropped by the server (a ``Waiting`` reason adds no history entry, so it has
no event).  A lost race re-reads and tries again; a change that
was applied already (redelivery) re-publishes its event under the same id and writes nothing.

Events stay in history order across writers: the write of a record and the publish of its event
are two steps, so another service may see the new state in KV and publish the next event first.
Before publishing its own event, ``apply`` therefore publishes the event of the state it moved
from too (when recent; the server drops the copy).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import structlog
from faststream.nats import NatsBroker
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from opentelemetry import propagate
from opentelemetry.trace import get_current_span

from trainmaster import kvstore
from trainmaster.bus import MSG_ID, publish_js
from trainmaster.messages import (
    AnyChange,
    HistoryEntry,
    JobCloudEvent,
    JobEventData,
    JobRecord,
    encode,
)
from trainmaster.pubacks import PubAcks
from trainmaster.statemachine import IllegalTransition, StaleChange, applied_entry, event_type, transition
from trainmaster.topology import Topology

log = structlog.get_logger()
_decode_record = msgspec.json.Decoder(JobRecord).decode


class JobNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ApplyResult:
    record: JobRecord
    applied: bool  # False: already applied earlier, or ignored as stale
    ignored_reason: str | None = None
    revision: int = 0  # the KV revision of ``record``


def event_id(job_id: str, seq: int) -> str:
    return f"{job_id}.{seq}"


def cloud_event(record: JobRecord, entry: HistoryEntry, source: str) -> JobCloudEvent:
    previous = record.history[entry.seq - 1].status if entry.seq > 0 else None
    spec = record.spec
    return JobCloudEvent(
        id=event_id(record.id, entry.seq),
        source=f"trainmaster/{source}",
        type=event_type(record, entry),
        subject=record.id,
        time=datetime.fromtimestamp(entry.at, UTC).isoformat(),
        data=JobEventData(
            job_id=record.id,
            name=record.name,
            version=record.version,
            status=entry.status,
            previous_status=previous,
            change=entry.change,
            reason=entry.reason,
            violations=record.violations if entry.change == "rejected" else [],
            warnings=record.warnings if entry.change == "validated" else [],
            exit_code=record.exit_code if entry.status.terminal else None,
            output_path=spec.output_path,
            log_path=spec.log_path,
        ),
    )


class JobStore:
    def __init__(self, broker: NatsBroker, topo: Topology, source: str,
                 clock: Callable[[], float] = time.time, max_attempts: int = 20,
                 js: JetStreamContext | None = None, published_memory: int = 4096,
                 pipe: PubAcks | None = None) -> None:
        """``js``: publish events with this plain JetStream client instead of the broker (its
        per-publish middleware costs a busy writer such as the scheduler a share of its CPU worth
        saving: docs/benchmarks.md, "Figures the code relies on"); the trace context still travels
        in the headers.  ``published_memory``: how many event ids this
        store remembers having published (to skip re-publishing them): more than a burst of changes.
        ``pipe``: compare-and-sets and events go out through it (one reply subscription for all, no
        request inbox and timer each: a writer of thousands of changes a second spent most of its
        CPU there), and events are not awaited: one that fails is logged, and the scheduler's
        record relay publishes what a record lacks."""
        self.broker = broker
        self.topo = topo
        self.source = source
        self.clock = clock
        self.max_attempts = max_attempts
        self.js = js
        self.published_memory = published_memory
        self.kv: KeyValue | None = None
        self.pipe = pipe
        self._kv_prefix = f"$KV.{topo.bucket_jobs.name}."
        self._published: OrderedDict[str, None] = OrderedDict()  # ids of events published here lately

    async def open(self) -> JobStore:
        self.kv = await self.broker.key_value(self.topo.bucket_jobs.name, declare=False)
        return self

    async def get(self, job_id: str) -> tuple[JobRecord, int]:
        assert self.kv is not None
        found = await kvstore.read(self.kv, job_id, _decode_record)
        if found is None:
            raise JobNotFound(job_id)
        return found.value, found.revision

    async def find(self, job_id: str) -> JobRecord | None:
        try:
            return (await self.get(job_id))[0]
        except (JobNotFound, ValueError):
            return None

    async def create(self, record: JobRecord) -> JobRecord:
        """Store a new record (Initializing) and publish its ``tm.job.submitted`` event.
        Creating an id that exists is a no-op returning the stored record (idempotent)."""
        assert self.kv is not None
        try:
            await self.kv.create(record.id, encode(record))
        except KeyWrongLastSequenceError:
            record, _ = await self.get(record.id)
        await self.publish_event(record, record.history[0])
        return record

    async def apply(self, job_id: str, change: AnyChange, known: tuple[JobRecord, int] | None = None) -> ApplyResult:
        """Apply ``change`` with compare-and-set.  IllegalTransition propagates to the caller.

        ``known``: the record and its revision as the caller last saw them (e.g. from a KV watch),
        tried instead of a first read.  Only a successful compare-and-set is taken from it: any other
        outcome is decided again on the stored record, so a stale guess costs a round trip, no more."""
        assert self.kv is not None
        for _ in range(self.max_attempts):
            guess = known is not None
            record, revision = known if known is not None else await self.get(job_id)
            known = None
            done = applied_entry(record, change)
            if done is not None:
                if guess:
                    continue
                await self.publish_event(record, done)
                return ApplyResult(record, applied=False, ignored_reason="already applied", revision=revision)
            try:
                updated = transition(record, change, self.clock())
            except (IllegalTransition, StaleChange) as refused:
                if guess:
                    continue  # judge again on the stored record
                if isinstance(refused, IllegalTransition):
                    raise
                log.info("stale change ignored", job_id=job_id, change=change.change_id, why=str(refused))
                return ApplyResult(record, applied=False, ignored_reason=str(refused), revision=revision)
            try:
                written = await self._update(job_id, encode(updated), revision)
            except KeyWrongLastSequenceError:
                continue  # somebody else wrote first: decide again on fresh state
            if len(updated.history) > len(record.history):  # a change without an entry has no event
                await self._announce(record, updated)
            return ApplyResult(updated, applied=True, revision=written)
        raise RuntimeError(f"job {job_id}: gave up after {self.max_attempts} compare-and-set conflicts")

    async def _update(self, job_id: str, value: bytes, last: int) -> int:
        """Compare-and-set: write ``value`` if the key's last revision is ``last``; the new revision."""
        assert self.kv is not None
        if self.pipe is None:
            return await self.kv.update(job_id, value, last=last)
        # KeyWrongLastSequenceError when somebody else wrote first
        return await (await self.pipe.publish(self._kv_prefix + job_id, value, last_subject_seq=last))

    async def _announce(self, before: JobRecord, after: JobRecord) -> None:
        """The events of a change already written.  The write is what happened: a publish that
        fails now (a cluster fail-over, or the relay publishing the same id at this moment) is
        left to the scheduler's record relay, which publishes whatever events a record lacks, so
        the caller is not told "not written" of a change that was."""
        try:
            await self._publish_previous(before)
            await self.publish_event(after, after.history[-1])
        except Exception as exc:
            log.warning("event not published; the record relay will", job_id=after.id,
                        event=event_id(after.id, after.history[-1].seq), error=f"{type(exc).__name__}: {exc}")

    async def _publish_previous(self, record: JobRecord) -> None:
        """The event of ``record``'s last entry, unless this store published it or it is older than
        half the duplicate window (a copy then could outlive the window and be kept twice)."""
        entry = record.history[-1]
        if event_id(record.id, entry.seq) in self._published:
            return
        if self.clock() - entry.at > self.topo.stream_events.duplicate_window_s / 2:
            return
        await self.publish_event(record, entry)

    async def publish_event(self, record: JobRecord, entry: HistoryEntry) -> None:
        event = cloud_event(record, entry, self.source)
        headers = {"Tm-Event-Type": event.type, "Tm-Job-Status": entry.status.value}
        if self.js is None:
            await publish_js(self.broker, self.topo.job_events(record.id), encode(event),
                             stream=self.topo.stream_events.name, msg_id=event.id, headers=headers)
        elif self.pipe is not None:
            headers[MSG_ID] = event.id
            if get_current_span().get_span_context().is_valid:
                propagate.inject(headers)
            future = await self.pipe.publish(self.topo.job_events(record.id), encode(event), headers=headers,
                                             stream=self.topo.stream_events.name)
            future.add_done_callback(_event_settled)
        else:
            headers[MSG_ID] = event.id
            if get_current_span().get_span_context().is_valid:
                propagate.inject(headers)
            await self.js.publish(self.topo.job_events(record.id), encode(event), stream=self.topo.stream_events.name,
                                  headers=headers, timeout=10.0)
        self.note_published(event.id)

    def event_message(self, record: JobRecord, entry: HistoryEntry) -> tuple[str, bytes, dict[str, str]]:
        """The event of ``entry`` as a JetStream publish (subject, body, headers with its id), for a
        writer that sends many at once; ``note_published`` it once stored."""
        event = cloud_event(record, entry, self.source)
        headers = {"Tm-Event-Type": event.type, "Tm-Job-Status": entry.status.value, MSG_ID: event.id}
        return self.topo.job_events(record.id), encode(event), headers

    def note_published(self, event_id: str) -> None:
        self._published[event_id] = None
        if len(self._published) > self.published_memory:
            self._published.popitem(last=False)


def _event_settled(future: asyncio.Future) -> None:
    """A pipelined event's PubAck: a failure is logged (the record relay publishes it later)."""
    if (exc := future.exception()) is not None:
        log.warning("event not published; the record relay will", error=f"{type(exc).__name__}: {exc}")
