"""An in-memory index of job summaries, fed by a watch on the jobs KV bucket, for ``job list``,
and of what placed jobs ask for, by account, for the use an account's quota counts.

Every job-intake replica keeps its own; the KV bucket stays the truth."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
from nats.js.kv import KeyValue

from services.job_intake.core import select
from trainmaster.messages import JobRecord, JobSummary, ListRequest, Resources, Status, summary_of

# a summary's fields are a record's: decoding a record as a summary skips its spec and history
_decode_summary = msgspec.json.Decoder(JobSummary).decode
HOLDS_CAPACITY = frozenset({Status.SCHEDULED, Status.RUNNING, Status.STOPPING})
MAX_WRITTEN = 100_000  # own writes awaiting their echo; past that, echoes are decoded like any update


class _Asks(msgspec.Struct):
    account: str = "default"
    resources: Resources = Resources()


class _Account(msgspec.Struct, frozen=True):
    account: str = "default"


class _Owned(msgspec.Struct):
    """Whose a job is (the rest of the record is skipped, not built)."""

    spec: _Account = _Account()


class _Placed(msgspec.Struct):
    """What a placed job's record says it holds (the rest of the record is skipped, not built)."""

    spec: _Asks


_decode_placed = msgspec.json.Decoder(_Placed).decode
_decode_owned = msgspec.json.Decoder(_Owned).decode


class JobIndex:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.jobs: dict[str, JobSummary] = {}
        self.placed: dict[str, tuple[str, Resources]] = {}  # job id -> (account, resources), while placed
        self.accounts: dict[str, str] = {}  # job id -> its account (who may see it)
        self._watcher = None
        # revisions this replica wrote and indexed itself (``put``): their watch echo is skipped
        self._written: dict[str, int] = {}

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
        if self._written and self._written.pop(entry.key, None) == entry.revision:
            return  # indexed already, from the record itself
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            self.jobs.pop(entry.key, None)
            self.placed.pop(entry.key, None)
            self.accounts.pop(entry.key, None)
            return
        summary = self.jobs[entry.key] = _decode_summary(entry.value)
        if entry.key not in self.accounts:  # a job's account does not change: decoded once
            self.accounts[entry.key] = _decode_owned(entry.value).spec.account
        if summary.status in HOLDS_CAPACITY:
            if entry.key not in self.placed:  # a placed job's spec does not change: decoded once
                asks = _decode_placed(entry.value).spec
                self.placed[entry.key] = (asks.account, asks.resources)
        else:
            self.placed.pop(entry.key, None)

    def put(self, record: JobRecord, revision: int | None = None) -> None:
        """Read-your-writes for this replica: index a record before its watch update arrives.
        ``revision``: the record's, when known; the watch's echo of it is then not decoded again."""
        if revision is not None and len(self._written) < MAX_WRITTEN:
            self._written[record.id] = revision
        self.jobs[record.id] = summary_of(record)
        self.accounts[record.id] = record.spec.account
        if record.status in HOLDS_CAPACITY:
            self.placed[record.id] = (record.spec.account, record.spec.resources)
        else:
            self.placed.pop(record.id, None)

    def placed_of(self, account: str) -> Iterator[Resources]:
        """What each placed job of ``account`` asks for."""
        return (resources for owner, resources in self.placed.values() if owner == account)

    def select(self, query: ListRequest, projects: frozenset[str] | None = None) -> tuple[list[JobSummary], int]:
        """The page of jobs ``query`` asks for, among those of ``projects`` (None: every job)."""
        return select(self.jobs.values(), query, self.accounts, projects)

    def visible_jobs(self, projects: frozenset[str] | None) -> list[JobSummary]:
        """The jobs of ``projects`` (None: every job)."""
        if projects is None:
            return list(self.jobs.values())
        return [j for j in self.jobs.values() if self.accounts.get(j.id) in projects]
