"""One placement pass (pure): walk the queue in order, place every job that fits (all of its
nodes, or none), refuse what can never fit, and hold agents back for a job blocked too long.

Gangs and starvation: a job that does not fit is skipped, and smaller jobs behind it may use the
capacity (backfill).  So that a big gang is not starved for ever by a stream of small jobs, the
first job of a pool that has been Pending longer than ``reserve_after_s`` gets a *reservation*:
agents that could hold it once idle and are expected to drain soonest (``placement.reserve``) take
no other job of the pass, so they drain as their jobs end, and the gang fits.  At most one
reservation per pool at a time.  Two gangs never deadlock half-placed: a placement is one state
change that holds every node.

Projects (accounts): a job whose account may not use its pool (a dedicated pool's ``accounts``) is
refused like one that never fits.  A job whose placement would take its account over its quota
(``quotas.py``) is passed over like one that does not fit, but it is no sign of the pool's
capacity: its twins of other accounts are still tried, and it gets no reservation (agents held back
for it would idle while its account's own jobs hold the quota).

Reasons: a job passed over gets the reason (``PassResult.waiting``, written to its record as
``pending_reason``) once it has waited ``explain_after_s`` and only when the reason changed, at
most ``max_reasons`` a pass, so that a burst of short waits writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from services.scheduler.placement import (
    AgentView,
    Demand,
    NodeShape,
    PoolIndex,
    Strategy,
    never_fits,
    place_gang,
    reserve,
)
from services.scheduler.queue import FairQueue, QueuedJob, dominant_share
from services.scheduler.quotas import QuotaBook, Use
from trainmaster.messages import AccountQuota


@dataclass(frozen=True)
class PassSettings:
    strategy: Strategy = "binpack"
    reserve_after_s: float = 30.0
    max_placements: int = 1024
    # False right after a start: agents not yet heard from could still make a job fit
    judge_impossible: bool = True
    # a job passed over gets its reason once it waited this long; at most max_reasons a pass
    explain_after_s: float = 2.0
    max_reasons: int = 64


@dataclass
class PassResult:
    placed: list[tuple[QueuedJob, list[str]]] = field(default_factory=list)  # agent of node 0, 1, ...
    impossible: list[tuple[QueuedJob, str]] = field(default_factory=list)
    reservations: dict[str, list[str]] = field(default_factory=dict)  # job id -> agents held back
    waiting: list[tuple[QueuedJob, str]] = field(default_factory=list)  # a reason to wait that changed
    considered: int = 0
    more: bool = False  # stopped at max_placements: jobs may be left that fit now


class Cluster:
    """Free capacity of the live agents, by pool, and every known agent for "never fits".

    Built fresh from agents (``Cluster(...)``), or over the pools the view keeps between passes
    (``Cluster.over``): then the caller brackets the pass with the pools' ``begin`` / ``rollback``."""

    def __init__(self, live: Iterable[AgentView], known: Iterable[AgentView], used: Mapping[str, Demand],
                 drain_at: Callable[[str], float] | None = None) -> None:
        by_pool: dict[str, list[AgentView]] = {}
        totals = Demand()
        for agent in live:
            by_pool.setdefault(agent.pool, []).append(agent)
            totals = totals + agent.capacity
        known_by_pool: dict[str, list[AgentView]] = {}
        for agent in known:
            known_by_pool.setdefault(agent.pool, []).append(agent)
        self._setup({pool: PoolIndex(agents, used) for pool, agents in by_pool.items()}, totals, known_by_pool,
                    {}, drain_at)

    @classmethod
    def over(cls, pools: dict[str, PoolIndex], totals: Demand, known: Mapping[str, Collection[AgentView]],
             never: dict[tuple[NodeShape, int], str | None],
             drain_at: Callable[[str], float] | None = None) -> Cluster:
        """A cluster over kept pools; ``never``: the verdicts of ``never_fits`` so far, valid as long
        as the known agents do not change (the keeper empties it when they do)."""
        cluster = cls.__new__(cls)
        cluster._setup(pools, totals, known, never, drain_at)
        return cluster

    def _setup(self, pools: dict[str, PoolIndex], totals: Demand, known: Mapping[str, Collection[AgentView]],
               never: dict[tuple[NodeShape, int], str | None], drain_at: Callable[[str], float] | None) -> None:
        self.pools = pools
        self.totals = totals
        self.known = known
        self._never = never
        self.drain_at = drain_at  # agent -> when it is expected to be idle (for reservations)

    def never_fits(self, shape: NodeShape, count: int) -> str | None:
        key = (shape, count)
        if key not in self._never:
            self._never[key] = never_fits(shape, count, list(self.known.get(shape.pool, ())))
        return self._never[key]


def plan_pass(queue: Iterable[QueuedJob] | FairQueue, cluster: Cluster, usage: Mapping[str, float], now: float,
              settings: PassSettings = PassSettings(),
              previous_reservations: Mapping[str, list[str]] | None = None,
              quotas: Mapping[str, AccountQuota] | None = None,
              held: Mapping[str, Use] | None = None) -> PassResult:
    """Decide this pass.  Mutates ``cluster``'s free capacity (a fresh one per pass, or kept pools
    rolled back after it).  ``queue``: the pending jobs, or a ``FairQueue`` over them already in
    order (with ``usage``).  ``quotas``: the accounts' quotas; ``held``: what each account's placed
    jobs hold now."""
    previous = previous_reservations or {}
    result = PassResult()
    fair = queue if isinstance(queue, FairQueue) else FairQueue(queue, usage)
    book = QuotaBook(quotas or {}, held or {})
    failed: set[tuple[NodeShape, int]] = set()  # shapes that did not fit: neither will their twins
    reserved_pools: set[str] = set()
    capacity_reasons: dict[tuple[NodeShape, int], str] = {}

    # a reason is made only for a job that may get one (most passes over a blocked queue give none)
    def explaining(job: QueuedJob) -> bool:
        return len(result.waiting) < settings.max_reasons and now - job.pending_since >= settings.explain_after_s

    def explain(job: QueuedJob, reason: str) -> None:
        if reason != job.reason:
            result.waiting.append((job, reason))

    def short_of_capacity(shape: NodeShape, count: int) -> str:
        key = (shape, count)  # the same for every twin: made once a pass
        if key not in capacity_reasons:
            capacity_reasons[key] = f"waiting for capacity in pool {shape.pool}: {count} node(s) of {shape.describe()}"
        return capacity_reasons[key]

    for job in fair:
        if len(result.placed) >= settings.max_placements:
            result.more = True
            break
        result.considered += 1
        shape = job.shape
        if shape is None:
            result.impossible.append((job, job.impossible or "no such resources"))
            continue
        # the catalog's verdict, as for an unknown pool: the catalog may have changed since validation
        if (why := shape.refusal(job.account)) is not None:
            result.impossible.append((job, why))
            continue
        if settings.judge_impossible and (why := cluster.never_fits(shape, job.node_count)):
            result.impossible.append((job, why))
            continue
        wanted = Use.of(shape.demand, job.node_count) if job.account in book.quotas else None
        if wanted is not None and (limit := book.block(job.account, wanted)) is not None:
            if explaining(job):
                explain(job, book.reason(job.account, limit, wanted))
            continue
        pool = cluster.pools.get(shape.pool)
        if pool is None:
            if explaining(job):
                explain(job, f"waiting for an agent of pool {shape.pool}: none is up")
            continue
        if (shape, job.node_count) in failed:
            if explaining(job):
                explain(job, short_of_capacity(shape, job.node_count))
            continue
        agents = place_gang(pool, shape, job.node_count, settings.strategy)
        if agents is not None:
            result.placed.append((job, agents))
            fair.charge(job.account, dominant_share(job.demand, cluster.totals))
            if wanted is not None:
                book.charge(job.account, wanted)
            continue
        failed.add((shape, job.node_count))
        held_back = ""
        if shape.pool not in reserved_pools and now - job.pending_since >= settings.reserve_after_s:
            agents_held = reserve(pool, shape, job.node_count, previous.get(job.job_id, ()), cluster.drain_at, now,
                                  settings.reserve_after_s or 30.0)
            if agents_held:
                pool.withheld.update(agents_held)
                reserved_pools.add(shape.pool)
                result.reservations[job.job_id] = agents_held
                held_back = "; agents are held back for it"
        if explaining(job):
            explain(job, short_of_capacity(shape, job.node_count) + held_back)
    return result
