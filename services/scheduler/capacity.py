"""The free capacity of the live agents, kept between passes (pure): the pools' sorted indexes
(``placement.PoolIndex``), the live agents' total capacity (for fair share), every agent heard from
by pool (for "never fits"), and the verdicts of ``never_fits`` until those agents change.

With 10,000 agents, building all of this afresh cost a pass more than the placements it made
(docs/benchmarks.md, "Where the scheduler's time goes"): the view now updates it as agents come
and go and placed jobs take and give back, and a pass plans on it between ``begin`` and
``rollback``."""

from __future__ import annotations

from collections.abc import Callable

from services.scheduler.placement import ZERO, AgentView, Demand, NodeShape, PoolIndex
from services.scheduler.planner import Cluster


class CapacityIndex:
    def __init__(self) -> None:
        self.pools: dict[str, PoolIndex] = {}
        self.known: dict[str, dict[str, AgentView]] = {}  # pool -> agents heard from, alive or not
        self.totals = ZERO  # capacity of the live agents
        self._live: dict[str, AgentView] = {}
        self._never: dict[tuple[NodeShape, int], str | None] = {}

    def heard_of(self, agent: AgentView) -> None:
        """An agent heard from, or its capacity changed: it counts for "never fits" from now on."""
        for pool, agents in self.known.items():
            if pool != agent.pool:
                agents.pop(agent.agent_id, None)
        self.known.setdefault(agent.pool, {})[agent.agent_id] = agent
        self._never.clear()

    def live(self, agent: AgentView, used: Demand) -> None:
        """The agent takes nodes (joined, came back, or its capacity changed); ``used``: what
        placed jobs hold on it."""
        self.gone(agent.agent_id)
        self._live[agent.agent_id] = agent
        self.totals = self.totals + agent.capacity
        self.pools.setdefault(agent.pool, PoolIndex((), {})).add(agent, used)

    def gone(self, agent_id: str) -> None:
        """The agent takes no nodes (lost)."""
        agent = self._live.pop(agent_id, None)
        if agent is None:
            return
        self.totals = self.totals - agent.capacity
        pool = self.pools[agent.pool]
        pool.remove(agent_id)
        if not pool.agents:
            del self.pools[agent.pool]

    def is_live(self, agent_id: str) -> bool:
        return agent_id in self._live

    def taken(self, agent_id: str, demand: Demand) -> None:
        """A placed job holds ``demand`` on the agent (nothing to do for one that is not live)."""
        if (agent := self._live.get(agent_id)) is not None:
            self.pools[agent.pool].take(agent_id, demand)

    def given(self, agent_id: str, demand: Demand) -> None:
        if (agent := self._live.get(agent_id)) is not None:
            self.pools[agent.pool].give(agent_id, demand)

    def cluster(self, drain_at: Callable[[str], float] | None = None) -> Cluster:
        """The cluster a pass plans on: these pools themselves (``begin`` / ``rollback`` around the pass)."""
        known = {pool: agents.values() for pool, agents in self.known.items()}
        return Cluster.over(self.pools, self.totals, known, self._never, drain_at)

    def begin(self) -> None:
        for pool in self.pools.values():
            pool.begin()

    def rollback(self) -> None:
        for pool in self.pools.values():
            pool.rollback()
