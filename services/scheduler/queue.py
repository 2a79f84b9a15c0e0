"""Pure queue order of pending jobs: priority, then fair share between accounts, then age.

- A job of higher ``priority`` is always considered before one of lower priority.
- Within one priority, accounts take turns: the next job comes from the account that holds the
  smallest *dominant share* of the cluster (its largest fraction of all CPUs, memory or GPUs, as in
  Dominant Resource Fairness), counting what it runs now plus what this pass has placed for it.
  So one account's 1,000 queued jobs do not starve another account's one job: that job's account
  holds less, and is served next.
- Within one account and priority, the oldest submission first (a retried job keeps its original
  submission time, so it goes ahead of its account's newer jobs).

No I/O, no clock: usage and cluster totals are passed in.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from services.scheduler.placement import Demand, NodeShape


@dataclass(frozen=True, slots=True)
class QueuedJob:
    job_id: str
    account: str
    priority: int
    submitted_at: float
    pending_since: float  # when it last became Pending: how long it has been blocked
    node_count: int
    shape: NodeShape | None  # None: ``impossible`` says why the catalog has no such node
    impossible: str | None = None
    reason: str | None = None  # why it waits, as its record says now (``pending_reason``)

    @property
    def demand(self) -> Demand:
        return self.shape.demand.times(self.node_count) if self.shape else Demand()


def dominant_share(demand: Demand, totals: Demand) -> float:
    """The largest fraction of any one resource of ``totals`` that ``demand`` takes (0 if none)."""
    shares = [used / total for used, total in
              ((demand.cpus, totals.cpus), (demand.memory_mb, totals.memory_mb), (demand.gpus, totals.gpus))
              if total > 0]
    return max(shares, default=0.0)


class FairQueue:
    """Iterate the pending jobs in queue order.  Call ``charge`` for a job that was placed, right
    after it was yielded: its account then waits behind accounts that now hold less.  A job that
    was not placed charges nothing, so its account's next job is considered at once."""

    def __init__(self, jobs: Iterable[QueuedJob], usage: Mapping[str, float]) -> None:
        tiers: dict[int, dict[str, list[QueuedJob]]] = {}
        for job in jobs:
            tiers.setdefault(job.priority, {}).setdefault(job.account, []).append(job)
        ordered = {priority: {account: iter(sorted(queued, key=age)) for account, queued in accounts.items()}
                   for priority, accounts in tiers.items()}
        self._setup(ordered, usage)

    @classmethod
    def ordered(cls, tiers: Mapping[int, Mapping[str, Iterator[QueuedJob]]], usage: Mapping[str, float]) -> FairQueue:
        """Over each priority's accounts' jobs, each account's already oldest first (``QueueBook``):
        no sort of the whole queue per pass."""
        fair = cls.__new__(cls)
        fair._setup(tiers, usage)
        return fair

    def _setup(self, tiers: Mapping[int, Mapping[str, Iterator[QueuedJob]]], usage: Mapping[str, float]) -> None:
        self.usage: dict[str, float] = dict(usage)
        self._tiers = tiers

    def charge(self, account: str, share: float) -> None:
        self.usage[account] = self.usage.get(account, 0.0) + share

    def _entry(self, account: str, head: QueuedJob) -> tuple[float, float, str, str]:
        return (self.usage.get(account, 0.0), head.submitted_at, head.job_id, account)

    def __iter__(self) -> Iterator[QueuedJob]:
        for priority in sorted(self._tiers, reverse=True):
            heads: dict[str, tuple[QueuedJob, Iterator[QueuedJob]]] = {}
            heap = []
            for account, jobs in self._tiers[priority].items():
                if (head := next(jobs, None)) is not None:
                    heads[account] = (head, jobs)
                    heap.append(self._entry(account, head))
            heapq.heapify(heap)
            while heap:
                account = heapq.heappop(heap)[3]
                head, jobs = heads[account]
                yield head
                if (head := next(jobs, None)) is not None:  # re-entered with its usage after a possible charge
                    heads[account] = (head, jobs)
                    heapq.heappush(heap, self._entry(account, head))


def age(job: QueuedJob) -> tuple[float, str]:
    """Within an account and priority: the oldest submission first."""
    return (job.submitted_at, job.job_id)


class QueueBook:
    """The pending jobs (``jobs``, by id), and each priority's accounts' jobs oldest first, kept
    between passes so that a pass over 100,000 queued jobs sorts nothing: a job is inserted once
    when it becomes Pending (a new one at the end); one that leaves stays in its list until the
    lists hold twice as many as are pending, and is skipped meanwhile."""

    def __init__(self) -> None:
        self.jobs: dict[str, QueuedJob] = {}
        self._lists: dict[int, dict[str, list[tuple[float, str]]]] = {}
        self._listed: set[str] = set()

    def put(self, job: QueuedJob) -> None:
        """A job that is Pending (again, or its record changed: a new reason to wait)."""
        self.jobs[job.job_id] = job
        if job.job_id not in self._listed:
            self._listed.add(job.job_id)
            bisect.insort(self._lists.setdefault(job.priority, {}).setdefault(job.account, []), age(job))

    def drop(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def tiers(self) -> dict[int, dict[str, Iterator[QueuedJob]]]:
        """Each priority's accounts' pending jobs, oldest first (for ``FairQueue.ordered``)."""
        if len(self._listed) > 2 * len(self.jobs) + 1024:
            self._compact()
        return {priority: {account: self._pending(keys) for account, keys in accounts.items()}
                for priority, accounts in self._lists.items()}

    def _pending(self, keys: list[tuple[float, str]]) -> Iterator[QueuedJob]:
        jobs = self.jobs
        for _, job_id in keys:
            if (job := jobs.get(job_id)) is not None:
                yield job

    def _compact(self) -> None:
        jobs = self.jobs
        self._lists = {priority: kept for priority, accounts in self._lists.items()
                       if (kept := {account: left for account, keys in accounts.items()
                                    if (left := [k for k in keys if k[1] in jobs])})}
        self._listed = set(jobs)


def queue_order(jobs: Iterable[QueuedJob], usage: Mapping[str, float], totals: Demand) -> list[QueuedJob]:
    """The whole order as if every job were placed in turn (for the API and the tests)."""
    fair = FairQueue(jobs, usage)
    order = []
    for job in fair:
        order.append(job)
        fair.charge(job.account, dominant_share(job.demand, totals))
    return order
