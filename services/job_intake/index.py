"""An in-memory index of job summaries, fed by a watch on the jobs KV bucket, for ``job list``.

Every job-intake replica keeps its own; the KV bucket stays the truth."""

from __future__ import annotations

import msgspec
from nats.js.kv import KeyValue

from services.job_intake.core import select
from trainmaster.messages import JobRecord, JobSummary, ListRequest, summary_of

# a summary's fields are a record's: decoding a record as a summary skips its spec and history
_decode_summary = msgspec.json.Decoder(JobSummary).decode


class JobIndex:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.jobs: dict[str, JobSummary] = {}
        self._watcher = None

    async def start(self) -> None:
        """Load every current record (the watch ends its initial values with ``None``)."""
        self._watcher = await self.kv.watchall(include_history=False)
        async for entry in self._watcher:
            if entry is None:
                break
            self._apply(entry)

    async def follow(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is not None:
                self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            self.jobs.pop(entry.key, None)
            return
        self.jobs[entry.key] = _decode_summary(entry.value)

    def put(self, record: JobRecord) -> None:
        """Read-your-writes for this replica: index a record before its watch update arrives."""
        self.jobs[record.id] = summary_of(record)

    def select(self, query: ListRequest) -> tuple[list[JobSummary], int]:
        return select(self.jobs.values(), query)
