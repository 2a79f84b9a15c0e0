"""Leadership among scheduler replicas: a lease in the KV bucket ``tm_scheduler`` (key ``leader``).

Only the leader places jobs, marks agents lost and times jobs out, so two replicas never commit
placements against two different views of the agents' capacity.  (Every replica handles agents'
reports: those are job-state changes, safe from any replica by compare-and-set.)

- The leader renews every ``lease_s / 4`` by compare-and-set at the revision it wrote last.  It
  acts as leader only until ``lease_s`` (less a safety margin) after it *sent* its last successful
  renewal, measured on its own monotonic clock.
- A follower polls the key.  It takes over when the revision it sees has not changed for
  ``lease_s`` of its own time (again a compare-and-set, at that revision: one follower wins), or at
  once when there is no key (first start, or a leader that stopped cleanly and deleted it).
- No clock is compared between hosts: the follower starts counting after the renewal was written,
  which is after the leader sent it, so the old leader's own deadline always comes first (as long
  as both clocks run at about the same rate).  A new leader also lets its view of the job records
  catch up with the bucket before it places anything (``Scheduler.take_office``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec
import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = structlog.get_logger()
LEADER_KEY = "leader"
SAFETY = 0.2  # the leader stops acting this fraction of the lease before a follower may take over


class LeaseRecord(msgspec.Struct, frozen=True):
    holder: str
    term: int


class LeaderLease:
    def __init__(self, kv: KeyValue, holder: str, lease_s: float,
                 clock: Callable[[], float] = time.monotonic, on_change: Callable[[bool], None] | None = None) -> None:
        self.kv = kv
        self.holder = holder
        self.lease_s = lease_s
        self.clock = clock
        self.on_change = on_change
        self.term = 0
        self.revision: int | None = None  # the revision of the key this replica wrote last
        self.valid_until = 0.0
        self._seen: tuple[int, float] | None = None  # (revision, when first seen) of another holder

    # ------------------------------------------------------------------ state
    def is_leader(self) -> bool:
        return self.clock() < self.valid_until

    def remaining_s(self) -> float:
        return max(self.valid_until - self.clock(), 0.0)

    def _won(self, revision: int, sent_at: float, term: int) -> None:
        was = self.is_leader()
        self.revision, self.term = revision, term
        self.valid_until = sent_at + self.lease_s * (1 - SAFETY)
        if not was:
            log.info("leader lease taken", holder=self.holder, term=term)
            if self.on_change:
                self.on_change(True)

    def _lost(self, why: str) -> None:
        was = self.is_leader() or self.revision is not None
        self.valid_until, self.revision = 0.0, None
        if was:
            (log.info if why == "stopping" else log.warning)("leader lease lost", holder=self.holder, why=why)
            if self.on_change:
                self.on_change(False)

    # ------------------------------------------------------------------ one round
    async def step(self) -> None:
        sent_at = self.clock()
        value = msgspec.json.encode(LeaseRecord(self.holder, self.term))
        if self.revision is not None:  # renew
            if sent_at >= self.valid_until:
                self._lost("not renewed in time")
                return
            try:
                revision = await self.kv.update(LEADER_KEY, value, last=self.revision)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                self._lost("another replica holds the lease")
                return
            self._won(revision, sent_at, self.term)
            return
        try:
            entry = await self.kv.get(LEADER_KEY)
        except KeyNotFoundError:  # also a deleted key: nobody leads
            entry = None
        if entry is None or not entry.value:
            with contextlib.suppress(KeyWrongLastSequenceError):
                term = self.term + 1
                revision = await self.kv.create(LEADER_KEY, msgspec.json.encode(LeaseRecord(self.holder, term)))
                self._won(revision, sent_at, term)
            return
        current = msgspec.json.decode(entry.value, type=LeaseRecord)
        revision = entry.revision or 0
        if self._seen is None or self._seen[0] != revision:
            self._seen = (revision, sent_at)  # renewed (or new): count afresh
            return
        if sent_at - self._seen[1] < self.lease_s:
            return
        with contextlib.suppress(KeyWrongLastSequenceError):
            term = current.term + 1
            value = msgspec.json.encode(LeaseRecord(self.holder, term))
            revision = await self.kv.update(LEADER_KEY, value, last=revision)
            log.warning("leader lease taken over from a silent leader", previous=current.holder)
            self._won(revision, sent_at, term)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as exc:  # the bus hiccuped: a leader's lease simply runs out meanwhile
                log.warning("leader lease round failed", error=f"{type(exc).__name__}: {exc}")
            if not self.is_leader() and self.revision is not None:
                self._lost("not renewed in time")
            await asyncio.sleep(self.lease_s / 4)

    async def release(self) -> None:
        """Hand the lease back at shutdown, so that a follower takes over at once."""
        revision = self.revision
        self._lost("stopping")
        if revision is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(LEADER_KEY, last=revision)
