"""The scheduler's memory, kept without I/O: the active job records (from the KV watch), the
agents (from heartbeats), the capacity that placed jobs hold (per agent, and per account for fair
share and quotas), updated incrementally as records change, so that a pass never re-adds 20,000
records to know what is free, nor re-sorts 10,000 agents (``capacity.py``) or 100,000 queued jobs
(``queue.QueueBook``); and the accounts' quotas (from a watch on ``tm_accounts``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.scheduler.capacity import CapacityIndex
from services.scheduler.placement import ZERO, AgentView, Demand, NodeShape, ShapeCatalog
from services.scheduler.planner import Cluster
from services.scheduler.queue import FairQueue, QueueBook, QueuedJob, dominant_share
from services.scheduler.quotas import NOTHING, Use
from services.scheduler.reconcile import live_nodes_on, silent_agents, timed_out
from services.scheduler.wakeup import Wake
from trainmaster.messages import AccountQuota, AgentHeartbeat, JobRecord, Status

S = Status
HOLDS_CAPACITY = frozenset({S.SCHEDULED, S.RUNNING, S.STOPPING})
ACTIVE = HOLDS_CAPACITY | {S.PENDING}


@dataclass(frozen=True, slots=True)
class Holding:
    """Capacity a placed job holds: its node demand on the agent of each node."""

    agents: tuple[str, ...]
    demand: Demand
    account: str

    @property
    def use(self) -> Use:
        return Use.of(self.demand, len(self.agents))


class SchedulerView:
    def __init__(self, shapes: ShapeCatalog, agent_timeout_s: float, started_at: float) -> None:
        self.shapes = shapes
        self.agent_timeout_s = agent_timeout_s
        self.started_at = started_at
        self.records: dict[str, JobRecord] = {}  # pending and capacity-holding jobs
        self.revisions: dict[str, int] = {}
        self.book = QueueBook()
        self.queued: dict[str, QueuedJob] = self.book.jobs  # the pending jobs, by id
        self.capacity = CapacityIndex()  # the live agents' free capacity, sorted per pool
        self.holdings: dict[str, Holding] = {}
        self.used: dict[str, Demand] = {}  # agent id -> held
        self.account_used: dict[str, Demand] = {}
        self.account_use: dict[str, Use] = {}  # what the quotas count (CPUs, GPUs, nodes, jobs)
        self.quotas: dict[str, AccountQuota] = {}
        self.with_deadline: set[str] = set()  # holding jobs that have a max_run_time_s
        # agent -> {job id: (placed at, deadline or None)}: how soon each agent may drain
        self.agent_jobs: dict[str, dict[str, tuple[float, float | None]]] = {}
        self.agents: dict[str, AgentView] = {}
        self.heartbeats: dict[str, AgentHeartbeat] = {}
        self.last_seen: dict[str, float] = {}
        self.lost: set[str] = set()
        self.max_revision = 0

    # ------------------------------------------------------------------ job records
    def remember(self, record: JobRecord, revision: int) -> Wake | None:
        """Take a record version in (an older revision than the one held is ignored).  What it
        changes that may let a blocked job fit (``wakeup.py``): a job became Pending, or capacity
        was given back; None when nothing of the kind."""
        self.max_revision = max(self.max_revision, revision)
        held = self.revisions.get(record.id)
        if held is not None and revision and revision <= held:
            return None
        previous = self.records.get(record.id)
        holding = self.holdings.get(record.id)
        self._release(record.id)
        self.book.drop(record.id)
        if record.status in ACTIVE:
            self.records[record.id] = record
            self.revisions[record.id] = revision
        else:
            self.records.pop(record.id, None)
            self.revisions.pop(record.id, None)
        if record.status == S.PENDING:
            self.book.put(self._queued(record))
        elif record.status in HOLDS_CAPACITY:
            self._hold(record)
        if record.status == S.PENDING and (previous is None or previous.status != S.PENDING):
            return Wake.NEW_JOB
        if holding is not None and ((after := self.holdings.get(record.id)) is None or after.agents != holding.agents):
            return Wake.CAPACITY_FREED
        return None

    def forget(self, job_id: str) -> None:
        """The record was deleted from the bucket."""
        self._release(job_id)
        self.book.drop(job_id)
        self.records.pop(job_id, None)
        self.revisions.pop(job_id, None)

    def _queued(self, record: JobRecord) -> QueuedJob:
        spec = record.spec
        shape = self.shapes.shape(spec.resources)
        return QueuedJob(
            job_id=record.id, account=spec.account, priority=spec.priority, submitted_at=record.created_at,
            pending_since=record.history[-1].at, node_count=spec.resources.node_count,
            shape=shape if isinstance(shape, NodeShape) else None,
            impossible=shape if isinstance(shape, str) else None, reason=record.pending_reason,
        )

    def _hold(self, record: JobRecord) -> None:
        shape = self.shapes.shape(record.spec.resources)
        # a placed job always had a shape; should the catalog lose its flavor, it holds nothing
        demand = shape.demand if isinstance(shape, NodeShape) else ZERO
        agents = tuple(p.agent_id for p in sorted(record.placements, key=lambda p: p.node))
        holding = Holding(agents, demand, record.spec.account)
        self.holdings[record.id] = holding
        for agent_id in agents:
            self.used[agent_id] = self.used.get(agent_id, ZERO) + demand
            self.capacity.taken(agent_id, demand)
        account = holding.account
        self.account_used[account] = self.account_used.get(account, ZERO) + demand.times(len(agents))
        self.account_use[account] = self.account_use.get(account, NOTHING) + holding.use
        placed_at = next((e.at for e in reversed(record.history) if e.change == "placed"), record.updated_at)
        limit = record.spec.max_run_time_s
        for agent_id in set(agents):
            self.agent_jobs.setdefault(agent_id, {})[record.id] = (placed_at, placed_at + limit if limit else None)
        if limit is not None:
            self.with_deadline.add(record.id)

    def _release(self, job_id: str) -> None:
        holding = self.holdings.pop(job_id, None)
        self.with_deadline.discard(job_id)
        if holding is None:
            return
        for agent_id in holding.agents:
            _subtract(self.used, agent_id, holding.demand)
            self.capacity.given(agent_id, holding.demand)
        for agent_id in set(holding.agents):
            jobs = self.agent_jobs.get(agent_id, {})
            jobs.pop(job_id, None)
            if not jobs:
                self.agent_jobs.pop(agent_id, None)
        _subtract(self.account_used, holding.account, holding.demand.times(len(holding.agents)))
        left = self.account_use[holding.account] - holding.use
        if left.empty():
            del self.account_use[holding.account]
        else:
            self.account_use[holding.account] = left

    # ------------------------------------------------------------------ quotas
    def set_quota(self, account: str, quota: AccountQuota | None) -> bool:
        """Take an account's quota in (None: it has none, or the account is gone).  True when it
        changed."""
        if self.quotas.get(account) == quota:
            return False
        if quota is None:
            del self.quotas[account]
        else:
            self.quotas[account] = quota
        return True

    # ------------------------------------------------------------------ agents
    def heard(self, hb: AgentHeartbeat, now: float) -> str | None:
        """Take a heartbeat in: "registered" or "returned" (after being lost) when that is news."""
        news = "registered" if hb.agent_id not in self.agents else "returned" if hb.agent_id in self.lost else None
        previous = self.heartbeats.get(hb.agent_id)
        if previous is None or (previous.pool, previous.cpus, previous.memory_mb, previous.gpus, previous.labels) != (
                hb.pool, hb.cpus, hb.memory_mb, hb.gpus, hb.labels):
            self.agents[hb.agent_id] = AgentView.of(hb)
            self.capacity.heard_of(self.agents[hb.agent_id])
            self.capacity.gone(hb.agent_id)  # taken in again below, with its new capacity
        self.heartbeats[hb.agent_id] = hb
        self.last_seen[hb.agent_id] = now
        self.lost.discard(hb.agent_id)
        if not self.capacity.is_live(hb.agent_id):
            self.capacity.live(self.agents[hb.agent_id], self.used.get(hb.agent_id, ZERO))
        return news

    def mark_lost(self, agent_id: str) -> None:
        """The agent is lost: no node is placed on it until it is heard from again."""
        self.lost.add(agent_id)
        self.capacity.gone(agent_id)

    def grace(self, now: float) -> None:
        """Count every agent as heard from now (after this scheduler could not listen for a while)."""
        for agent_id in (set(self.agents) | set(self.used)) - self.lost:
            self.last_seen[agent_id] = max(self.last_seen.get(agent_id, now), now)

    def alive(self, agent_id: str, now: float) -> bool:
        return (agent_id not in self.lost
                and now - self.last_seen.get(agent_id, self.started_at) <= self.agent_timeout_s)

    def newly_lost(self, now: float) -> list[str]:
        """Agents silent past the timeout and not yet marked lost, including agents that hold nodes
        but were never heard from by this scheduler (counted from its start)."""
        candidates = (set(self.agents) | set(self.used)) - self.lost
        return silent_agents(candidates, self.last_seen, now, self.agent_timeout_s, self.started_at)

    def jobs_on(self, agent_id: str) -> list[JobRecord]:
        return [self.records[job_id] for job_id, holding in self.holdings.items()
                if agent_id in holding.agents and live_nodes_on(self.records[job_id], agent_id)]

    def timed_out(self, now: float) -> list[JobRecord]:
        return [self.records[job_id] for job_id in self.with_deadline if timed_out(self.records[job_id], now)]

    # ------------------------------------------------------------------ for a pass
    def drain_at(self, agent_id: str, now: float) -> float:
        """When the agent is expected to be idle: the latest of its jobs' expected ends, each the
        job's deadline (``max_run_time_s``) if it has one and that comes first, else as long again
        as it has run so far (without run-time estimates, a job that has run long is likely to run
        long)."""
        ends = [min(deadline, 2 * now - placed_at) if deadline is not None else 2 * now - placed_at
                for placed_at, deadline in self.agent_jobs.get(agent_id, {}).values()]
        return max(ends, default=now)

    def cluster(self, now: float) -> Cluster:
        """The cluster a pass plans on: the kept index itself (wrap the pass in ``capacity.begin``
        and ``capacity.rollback``).  Agents silent past the timeout leave it when the loop marks them
        lost (``mark_lost``)."""
        return self.capacity.cluster(drain_at=lambda agent_id: self.drain_at(agent_id, now))

    def fair_queue(self, usage: dict[str, float]) -> FairQueue:
        """The pending jobs in queue order, from the kept per-account lists (nothing sorted)."""
        return FairQueue.ordered(self.book.tiers(), usage)

    def usage_shares(self, totals: Demand) -> dict[str, float]:
        return {account: dominant_share(used, totals) for account, used in self.account_used.items()}

    def scheduled(self) -> Iterable[JobRecord]:
        return (r for r in self.records.values() if r.status == S.SCHEDULED)


def _subtract(totals: dict[str, Demand], key: str, demand: Demand) -> None:
    left = totals[key] - demand
    # fractional CPUs may leave a rounding crumb: nothing held is no entry
    if abs(left.cpus) < 1e-6 and left.memory_mb == 0 and left.gpus == 0:
        del totals[key]
    else:
        totals[key] = left
