"""Pure placement: which agents take the nodes of a job, given their free capacity.

- **Demand**: one node asks for its flavor (catalog ``resources.yaml``): CPUs, memory, GPUs of a
  GPU type; ``resources.flavor`` None means the pool's default (first) flavor.
- **Feasibility**: an agent fits a node when its free capacity covers the flavor and, for a GPU
  flavor, its GPU model matches the flavor's ``gpu_type`` (``gpu_matches``).
- **Ranking**: ``binpack`` (default) takes the fitting agent with the least free (GPUs, then CPUs):
  busy agents fill up and whole agents stay free for big jobs; ``spread`` takes the most free.
- **Gang**: every node of a job is placed in one go, or none is (``place_gang``).
- **Never fits**: ``never_fits`` says why a job can never run on the agents of its pool;
  ``NodeShape.refusal`` why its account may not use the pool (a dedicated pool's ``accounts``).

``PoolIndex`` keeps a pool's live agents sorted by free (GPUs, CPUs), so the best fit is a
bisection and a short scan, not a pass over every agent.  No I/O and no clock here.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from trainmaster.catalog import ResourceCatalog
from trainmaster.messages import AgentHeartbeat, Resources

Strategy = Literal["binpack", "spread"]


@dataclass(frozen=True, slots=True)
class Demand:
    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0

    def __add__(self, other: Demand) -> Demand:
        return Demand(self.cpus + other.cpus, self.memory_mb + other.memory_mb, self.gpus + other.gpus)

    def __sub__(self, other: Demand) -> Demand:
        return Demand(self.cpus - other.cpus, self.memory_mb - other.memory_mb, self.gpus - other.gpus)

    def times(self, n: int) -> Demand:
        return Demand(self.cpus * n, self.memory_mb * n, self.gpus * n)

    def fits_in(self, free: Demand) -> bool:
        return self.cpus <= free.cpus and self.memory_mb <= free.memory_mb and self.gpus <= free.gpus

    def describe(self, gpu_type: str | None = None) -> str:
        text = f"{self.cpus:g} CPUs, {self.memory_mb} MiB"
        return f"{text}, {self.gpus} x {gpu_type or 'GPU'}" if self.gpus else text


ZERO = Demand()


@dataclass(frozen=True, slots=True)
class NodeShape:
    """What each node of a job asks for."""

    pool: str
    flavor: str
    demand: Demand
    gpu_type: str | None = None
    accounts: frozenset[str] | None = None  # who may use the pool (a dedicated pool); None: everyone

    def describe(self) -> str:
        return f"flavor {self.flavor} ({self.demand.describe(self.gpu_type)})"

    def refusal(self, account: str) -> str | None:
        """Why ``account`` may not use the pool (the catalog's ``accounts``), or None."""
        if self.accounts is None or account in self.accounts:
            return None
        allowed = ", ".join(sorted(self.accounts)) or "no account"
        return f"pool {self.pool!r} is dedicated to {allowed}; account {account} may not use it"


class ShapeCatalog:
    """Node shapes from the resource catalog, cached per (pool, flavor)."""

    def __init__(self, catalog: ResourceCatalog) -> None:
        self.catalog = catalog
        self._cache: dict[tuple[str, str | None], NodeShape | str] = {}

    def shape(self, resources: Resources) -> NodeShape | str:
        """The node shape, or why the catalog has none (an unknown pool or flavor)."""
        key = (resources.pool, resources.flavor)
        if (cached := self._cache.get(key)) is None:
            cached = self._cache[key] = self._lookup(*key)
        return cached

    def _lookup(self, pool_name: str, flavor_name: str | None) -> NodeShape | str:
        pool = self.catalog.pool(pool_name)
        if pool is None:
            known = ", ".join(p.name for p in self.catalog.pools)
            return f"no resource pool {pool_name!r} (pools: {known})"
        flavor = pool.flavor(flavor_name)
        if flavor is None:
            known = ", ".join(f.name for f in pool.flavors)
            return f"pool {pool_name!r} has no flavor {flavor_name!r} (flavors: {known})"
        return NodeShape(pool_name, flavor.name, Demand(flavor.cpus, flavor.memory_mb, flavor.gpus),
                         flavor.gpu_type if flavor.gpus else None,
                         frozenset(pool.accounts) if pool.accounts is not None else None)


# ------------------------------------------------------------------------------ GPUs
_WORD = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=1024)
def gpu_matches(gpu_type: str | None, model: str) -> bool:
    """A flavor's ``gpu_type`` matches a GPU model when every word of it is a word of the model,
    ignoring case; words are runs of letters and digits.  "H100" matches "NVIDIA H100 80GB HBM3"
    and "NVIDIA H100-PCIE"; "T4" matches "Tesla T4"; "A10" does not match "NVIDIA A100-SXM4-80GB"
    (a plain substring test would).  No ``gpu_type`` matches any model."""
    if not gpu_type:
        return True
    wanted = set(_WORD.findall(gpu_type.lower()))
    return bool(wanted) and wanted <= set(_WORD.findall(model.lower()))


# ------------------------------------------------------------------------------ agents
@dataclass(frozen=True, slots=True)
class AgentView:
    agent_id: str
    host: str
    pool: str
    capacity: Demand
    gpu_model: str = ""  # the model of most of its GPUs ("" without GPUs)
    labels: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def of(hb: AgentHeartbeat) -> AgentView:
        models = Counter(g.model for g in hb.gpus)
        model = models.most_common(1)[0][0] if models else ""
        return AgentView(hb.agent_id, hb.host, hb.pool, Demand(hb.cpus, hb.memory_mb, len(hb.gpus)), model,
                         hb.labels)

    def suits(self, shape: NodeShape) -> bool:
        """The agent's kind fits the shape (its GPU model), whatever is free now."""
        return not shape.demand.gpus or gpu_matches(shape.gpu_type, self.gpu_model)

    def nodes_that_fit(self, shape: NodeShape) -> int:
        """How many nodes of ``shape`` the agent could hold when idle."""
        if not self.suits(shape):
            return 0
        d, c = shape.demand, self.capacity
        counts = [math.floor(have / want) for have, want in
                  ((c.cpus, d.cpus), (c.memory_mb, d.memory_mb), (c.gpus, d.gpus)) if want > 0]
        return min(counts) if counts else 1_000_000


class PoolIndex:
    """The live agents of one pool and their free capacity, sorted by free (GPUs, CPUs, id).

    Kept from pass to pass by the view (agents join and leave, placed jobs take and give back);
    a pass plans on it between ``begin`` and ``rollback``: what the pass took, and the agents it
    held back, are undone after it, and its placements come back as the view takes their records
    in."""

    def __init__(self, agents: Iterable[AgentView], used: Mapping[str, Demand]) -> None:
        self.agents = {a.agent_id: a for a in agents}
        self.free = {a.agent_id: a.capacity - used.get(a.agent_id, ZERO) for a in self.agents.values()}
        self.order = sorted(self._key(agent_id) for agent_id in self.agents)
        self.withheld: set[str] = set()
        self._journal: list[tuple[str, Demand]] | None = None  # (agent, free before) while planning

    def _key(self, agent_id: str) -> tuple[int, float, str]:
        free = self.free[agent_id]
        return (free.gpus, free.cpus, agent_id)

    def _set_free(self, agent_id: str, free: Demand) -> None:
        del self.order[bisect.bisect_left(self.order, self._key(agent_id))]
        self.free[agent_id] = free
        bisect.insort(self.order, self._key(agent_id))

    def _move(self, agent_id: str, delta: Demand, sign: int) -> None:
        free = self.free[agent_id]
        if self._journal is not None:
            self._journal.append((agent_id, free))
        self._set_free(agent_id, free - delta if sign < 0 else free + delta)

    def take(self, agent_id: str, demand: Demand) -> None:
        self._move(agent_id, demand, -1)

    def give(self, agent_id: str, demand: Demand) -> None:
        self._move(agent_id, demand, +1)

    # ------------------------------------------------------------------ kept by the view
    def add(self, agent: AgentView, used: Demand = ZERO) -> None:
        """An agent joins (or its capacity changed): free is its capacity less what is ``used``."""
        if agent.agent_id in self.agents:
            self.remove(agent.agent_id)
        self.agents[agent.agent_id] = agent
        self.free[agent.agent_id] = agent.capacity - used
        bisect.insort(self.order, self._key(agent.agent_id))

    def remove(self, agent_id: str) -> None:
        if agent_id not in self.agents:
            return
        del self.order[bisect.bisect_left(self.order, self._key(agent_id))]
        del self.agents[agent_id], self.free[agent_id]

    def begin(self) -> None:
        """A pass starts planning: what it takes is journaled, to be undone by ``rollback``."""
        self._journal = []
        self.withheld = set()

    def rollback(self) -> None:
        journal, self._journal = self._journal or [], None
        for agent_id, free in reversed(journal):
            if agent_id in self.agents:
                self._set_free(agent_id, free)
        self.withheld = set()

    # ------------------------------------------------------------------ a pass
    def fits(self, agent_id: str, shape: NodeShape) -> bool:
        return (agent_id not in self.withheld and shape.demand.fits_in(self.free[agent_id])
                and self.agents[agent_id].suits(shape))

    def best(self, shape: NodeShape, strategy: Strategy = "binpack") -> str | None:
        """The agent that takes the next node, or None when no agent has room for it now."""
        d = shape.demand
        start = bisect.bisect_left(self.order, (d.gpus, d.cpus, ""))
        order = self.order
        # agents before ``start`` have too few free GPUs, or as many and too few free CPUs
        indices = range(start, len(order)) if strategy == "binpack" else range(len(order) - 1, start - 1, -1)
        for i in indices:
            agent_id = order[i][2]
            if self.fits(agent_id, shape):
                return agent_id
        return None


def place_gang(index: PoolIndex, shape: NodeShape, count: int, strategy: Strategy = "binpack") -> list[str] | None:
    """Agents for all ``count`` nodes (node i on the i-th agent; one agent may take several), taken
    from ``index``; or None, and ``index`` unchanged, when they do not all fit now."""
    taken: list[str] = []
    for _ in range(count):
        agent_id = index.best(shape, strategy)
        if agent_id is None:
            for back in taken:
                index.give(back, shape.demand)
            return None
        index.take(agent_id, shape.demand)
        taken.append(agent_id)
    return taken


def reserve(index: PoolIndex, shape: NodeShape, count: int, preferred: Sequence[str] = (),
            drain_at: Callable[[str], float] | None = None, now: float = 0.0,
            horizon_s: float = 30.0) -> list[str] | None:
    """Agents to hold back for a job that waits too long: ones that could hold its ``count`` nodes
    once idle, those expected to drain soonest first.

    ``drain_at(agent)``: when the agent is expected to be idle (the shell estimates it from the jobs
    it runs: a job's deadline if it has a ``max_run_time_s``, else as long again as it has run so
    far).  Agents are compared in buckets of ``horizon_s`` of that estimate (it is rough), then by
    free capacity now, then the ones reserved before first: held-back agents only gain free
    capacity, so the reservation settles on agents that drain and stays there.  Without
    ``drain_at``, free capacity alone ranks them.  None when even idle agents could not hold it."""
    before = set(preferred)

    def rank(agent_id: str) -> tuple[int, int, float, bool, str]:
        free = index.free[agent_id]
        bucket = math.ceil(max(drain_at(agent_id) - now, 0.0) / horizon_s) if drain_at else 0
        return (-bucket, free.gpus, free.cpus, agent_id in before, agent_id)

    chosen: list[str] = []
    left = count
    for agent_id in sorted(index.agents, key=rank, reverse=True):
        if left <= 0:
            break
        if agent_id in index.withheld:
            continue
        holds = index.agents[agent_id].nodes_that_fit(shape)
        if holds > 0:
            chosen.append(agent_id)
            left -= holds
    return chosen if left <= 0 else None


def never_fits(shape: NodeShape, count: int, agents: Sequence[AgentView]) -> str | None:
    """Why a job of ``count`` nodes of ``shape`` can never run on ``agents`` (the pool's known
    agents, idle), or None when it could.  Without any agent nothing is decided."""
    if not agents:
        return None
    holds = [a.nodes_that_fit(shape) for a in agents]
    if max(holds) == 0:
        suited = [a for a in agents if a.suits(shape)]
        if not suited:
            models = sorted({a.gpu_model or "no GPU" for a in agents})
            return (f"no agent of pool {shape.pool!r} has {shape.gpu_type or 'a'} GPU for {shape.describe()}; "
                    f"its agents have: {', '.join(models)}")
        largest = max(suited, key=lambda a: (a.capacity.gpus, a.capacity.cpus, a.capacity.memory_mb))
        return (f"no agent of pool {shape.pool!r} can hold one node of {shape.describe()}; "
                f"the largest has {largest.capacity.describe()}")
    if count > sum(holds):
        return (f"pool {shape.pool!r} can hold at most {sum(holds)} nodes of {shape.describe()} at once "
                f"({len(agents)} agents); the job asks for {count}")
    return None
