"""The job record store: JetStream KV, written only through the state machine.

``apply`` is the one write path: read at a revision, ``statemachine.transition``, update at that
revision (compare-and-set), then publish the CloudEvent with ``Nats-Msg-Id`` = the event id, so
a retried publish is dropped by the server.  A lost race re-reads and tries again; a change that
was applied already (redelivery) re-publishes its event under the same id and writes nothing.

Events stay in history order across writers: the write of a record and the publish of its event
are two steps, so another service may see the new state in KV and publish the next event first.
Before publishing its own event, ``apply`` therefore publishes the event of the state it moved
from too (when recent; the server drops the copy).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import structlog
from faststream.nats import NatsBroker
from nats.js.errors import InvalidKeyError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from trainmaster.bus import publish_js
from trainmaster.messages import (
    AnyChange,
    HistoryEntry,
    JobCloudEvent,
    JobEventData,
    JobRecord,
    encode,
)
from trainmaster.statemachine import StaleChange, applied_entry, event_type, transition
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
                 clock: Callable[[], float] = time.time, max_attempts: int = 20) -> None:
        self.broker = broker
        self.topo = topo
        self.source = source
        self.clock = clock
        self.max_attempts = max_attempts
        self.kv: KeyValue | None = None
        self._published: OrderedDict[str, None] = OrderedDict()  # ids of events published here lately

    async def open(self) -> JobStore:
        self.kv = await self.broker.key_value(self.topo.bucket_jobs.name, declare=False)
        return self

    async def get(self, job_id: str) -> tuple[JobRecord, int]:
        assert self.kv is not None
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            raise JobNotFound(job_id) from None
        if entry.value is None:
            raise JobNotFound(job_id)
        return _decode_record(entry.value), entry.revision or 0

    async def find(self, job_id: str) -> JobRecord | None:
        try:
            return (await self.get(job_id))[0]
        except (JobNotFound, InvalidKeyError, ValueError):
            # InvalidKeyError: an id with characters KV keys do not allow is not a job either
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

    async def apply(self, job_id: str, change: AnyChange) -> ApplyResult:
        """Apply ``change`` with compare-and-set.  IllegalTransition propagates to the caller."""
        assert self.kv is not None
        for _ in range(self.max_attempts):
            record, revision = await self.get(job_id)
            done = applied_entry(record, change)
            if done is not None:
                await self.publish_event(record, done)
                return ApplyResult(record, applied=False, ignored_reason="already applied")
            try:
                updated = transition(record, change, self.clock())
            except StaleChange as stale:
                log.info("stale change ignored", job_id=job_id, change=change.change_id, why=str(stale))
                return ApplyResult(record, applied=False, ignored_reason=str(stale))
            try:
                await self.kv.update(job_id, encode(updated), last=revision)
            except KeyWrongLastSequenceError:
                continue  # somebody else wrote first: decide again on fresh state
            await self._publish_previous(record)
            await self.publish_event(updated, updated.history[-1])
            return ApplyResult(updated, applied=True)
        raise RuntimeError(f"job {job_id}: gave up after {self.max_attempts} compare-and-set conflicts")

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
        await publish_js(
            self.broker,
            self.topo.job_events(record.id),
            encode(event),
            stream=self.topo.stream_events.name,
            msg_id=event.id,
            headers={"Tm-Event-Type": event.type, "Tm-Job-Status": entry.status.value},
        )
        self._published[event.id] = None
        if len(self._published) > 4096:
            self._published.popitem(last=False)
