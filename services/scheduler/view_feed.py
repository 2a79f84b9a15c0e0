"""What feeds the scheduler's view from the KV buckets: every active job record (the watch is the
queue's memory) and every account's quota, loaded at start and then followed change by change."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import structlog
from nats.js.kv import KeyValue

from services.scheduler.view import SchedulerView
from services.scheduler.wakeup import Wake
from trainmaster.jobstore import JobStore
from trainmaster.messages import AccountQuota, JobRecord
from trainmaster.service import ServiceContext

log = structlog.get_logger()
_decode_record = msgspec.json.Decoder(JobRecord).decode


class _QuotaOf(msgspec.Struct):
    """The part of an account record the scheduler reads: its ledger (up to 1,000 entries) is
    skipped by the decoder, not built."""

    quota: AccountQuota | None = None


_decode_quota = msgspec.json.Decoder(_QuotaOf).decode


class ViewFeed:
    """Keeps ``view`` up to date with the buckets, and calls ``wake`` when a change may let the
    loop place something (a job became pending, capacity was given back, a quota was raised)."""

    def __init__(self, ctx: ServiceContext, store: JobStore, view: SchedulerView, wake: Callable[[Wake], None]) -> None:
        self.ctx = ctx
        self.store = store
        self.view = view
        self.wake = wake

    def remember(self, record: JobRecord, revision: int) -> None:
        if (reason := self.view.remember(record, revision)) is not None:
            self.wake(reason)  # a job became pending or capacity was given back

    # ------------------------------------------------------------------ the job records
    async def load(self) -> None:
        """Every active record, then keep following changes (the watch is the queue's memory)."""
        watcher = await self.store.kv.watchall(include_history=False)  # type: ignore[union-attr]
        async for entry in watcher:
            if entry is None:
                break
            self._take(entry)
        self.ctx.background(self._follow(watcher), "jobs-watch")

    def _take(self, entry) -> None:
        if entry.value:
            revision = entry.revision or 0
            if revision and self.view.revisions.get(entry.key) == revision:
                self.view.max_revision = max(self.view.max_revision, revision)
                return  # the echo of this replica's own write: known already, no need to decode it
            self.remember(_decode_record(entry.value), revision)
        else:  # deleted or purged
            self.view.forget(entry.key)

    async def _follow(self, watcher, take: Callable[..., None] | None = None) -> None:
        take = take or self._take
        async for entry in watcher:
            if entry is not None:
                take(entry)

    # ------------------------------------------------------------------ the accounts' quotas
    async def load_quotas(self, accounts: KeyValue) -> None:
        """Every account's quota, then keep following changes.  Watched, not read each pass: a
        pass is pure and runs up to fifty times a second, and an account changes rarely (a
        credit, a quota, the charge of an ended job), so the watch costs one small decode per
        change where reading each pass would cost a read of every account, ledger and all."""
        watcher = await accounts.watchall(include_history=False)
        async for entry in watcher:
            if entry is None:
                break
            self._take_account(entry)
        self.ctx.background(self._follow(watcher, self._take_account), "accounts-watch")

    def _take_account(self, entry) -> None:
        quota = None
        if entry.value:
            try:
                quota = _decode_quota(entry.value).quota
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # job-intake's record, not this service's to refuse: its quota counts as absent
                log.warning("account record not understood; no quota applied", account=entry.key, error=str(exc))
        if self.view.set_quota(entry.key, quota):
            log.info("account quota", account=entry.key, quota=msgspec.to_builtins(quota) if quota else None)
            self.wake(Wake.QUOTA_CHANGED)  # a quota raised (or removed) may let jobs go
