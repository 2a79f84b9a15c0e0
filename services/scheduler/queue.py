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
        self.usage: dict[str, float] = dict(usage)
        tiers: dict[int, dict[str, list[QueuedJob]]] = {}
        for job in jobs:
            tiers.setdefault(job.priority, {}).setdefault(job.account, []).append(job)
        # each account's jobs newest first, so that the oldest is popped from the end
        for accounts in tiers.values():
            for queued in accounts.values():
                queued.sort(key=lambda j: (j.submitted_at, j.job_id), reverse=True)
        self._tiers = tiers

    def charge(self, account: str, share: float) -> None:
        self.usage[account] = self.usage.get(account, 0.0) + share

    def _entry(self, account: str, queued: list[QueuedJob]) -> tuple[float, float, str, str]:
        head = queued[-1]
        return (self.usage.get(account, 0.0), head.submitted_at, head.job_id, account)

    def __iter__(self) -> Iterator[QueuedJob]:
        for priority in sorted(self._tiers, reverse=True):
            accounts = self._tiers[priority]
            heap = [self._entry(account, queued) for account, queued in accounts.items()]
            heapq.heapify(heap)
            while heap:
                account = heapq.heappop(heap)[3]
                queued = accounts[account]
                yield queued.pop()
                if queued:  # re-entered with its usage after a possible charge
                    heapq.heappush(heap, self._entry(account, queued))


def queue_order(jobs: Iterable[QueuedJob], usage: Mapping[str, float], totals: Demand) -> list[QueuedJob]:
    """The whole order as if every job were placed in turn (for the API and the tests)."""
    fair = FairQueue(jobs, usage)
    order = []
    for job in fair:
        order.append(job)
        fair.charge(job.account, dominant_share(job.demand, totals))
    return order
