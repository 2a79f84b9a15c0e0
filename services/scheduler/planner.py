"""One placement pass (pure): walk the queue in order, place every job that fits (all of its
nodes, or none), refuse what can never fit, and hold agents back for a job blocked too long.

Gangs and starvation: a job that does not fit is skipped, and smaller jobs behind it may use the
capacity (backfill).  So that a big gang is not starved for ever by a stream of small jobs, the
first job of a pool that has been Pending longer than ``reserve_after_s`` gets a *reservation*:
agents that could hold it once idle and are expected to drain soonest (``placement.reserve``) take
no other job of the pass, so they drain as their jobs end, and the gang fits.  At most one
reservation per pool at a time.  Two gangs never deadlock half-placed: a placement is one state
change that holds every node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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


@dataclass(frozen=True)
class PassSettings:
    strategy: Strategy = "binpack"
    reserve_after_s: float = 30.0
    max_placements: int = 1024
    # False right after a start: agents not yet heard from could still make a job fit
    judge_impossible: bool = True


@dataclass
class PassResult:
    placed: list[tuple[QueuedJob, list[str]]] = field(default_factory=list)  # agent of node 0, 1, ...
    impossible: list[tuple[QueuedJob, str]] = field(default_factory=list)
    reservations: dict[str, list[str]] = field(default_factory=dict)  # job id -> agents held back
    considered: int = 0
    more: bool = False  # stopped at max_placements: jobs may be left that fit now


class Cluster:
    """Free capacity of the live agents, by pool, and every known agent for "never fits"."""

    def __init__(self, live: Iterable[AgentView], known: Iterable[AgentView], used: Mapping[str, Demand],
                 drain_at: Callable[[str], float] | None = None) -> None:
        by_pool: dict[str, list[AgentView]] = {}
        totals = Demand()
        for agent in live:
            by_pool.setdefault(agent.pool, []).append(agent)
            totals = totals + agent.capacity
        self.pools = {pool: PoolIndex(agents, used) for pool, agents in by_pool.items()}
        self.totals = totals
        self.known: dict[str, list[AgentView]] = {}
        for agent in known:
            self.known.setdefault(agent.pool, []).append(agent)
        self._never: dict[tuple[NodeShape, int], str | None] = {}
        self.drain_at = drain_at  # agent -> when it is expected to be idle (for reservations)

    def never_fits(self, shape: NodeShape, count: int) -> str | None:
        key = (shape, count)
        if key not in self._never:
            self._never[key] = never_fits(shape, count, self.known.get(shape.pool, []))
        return self._never[key]


def plan_pass(queue: Iterable[QueuedJob], cluster: Cluster, usage: Mapping[str, float], now: float,
              settings: PassSettings = PassSettings(),
              previous_reservations: Mapping[str, list[str]] | None = None) -> PassResult:
    """Decide this pass.  Mutates ``cluster``'s free capacity (build a fresh one per pass)."""
    previous = previous_reservations or {}
    result = PassResult()
    fair = FairQueue(queue, usage)
    failed: set[tuple[NodeShape, int]] = set()  # shapes that did not fit: neither will their twins
    reserved_pools: set[str] = set()
    for job in fair:
        if len(result.placed) >= settings.max_placements:
            result.more = True
            break
        result.considered += 1
        shape = job.shape
        if shape is None:
            result.impossible.append((job, job.impossible or "no such resources"))
            continue
        if settings.judge_impossible and (why := cluster.never_fits(shape, job.node_count)):
            result.impossible.append((job, why))
            continue
        pool = cluster.pools.get(shape.pool)
        if pool is None or (shape, job.node_count) in failed:
            continue
        agents = place_gang(pool, shape, job.node_count, settings.strategy)
        if agents is not None:
            result.placed.append((job, agents))
            fair.charge(job.account, dominant_share(job.demand, cluster.totals))
            continue
        failed.add((shape, job.node_count))
        if shape.pool not in reserved_pools and now - job.pending_since >= settings.reserve_after_s:
            held = reserve(pool, shape, job.node_count, previous.get(job.job_id, ()), cluster.drain_at, now,
                           settings.reserve_after_s or 30.0)
            if held:
                pool.withheld.update(held)
                reserved_pools.add(shape.pool)
                result.reservations[job.job_id] = held
    return result
