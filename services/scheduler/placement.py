"""Pure placement: ``place(snapshot, job_id, resources) -> placements | None``.

Reads a snapshot of agents and what is already placed on them; returns one placement per node
(all nodes at once, or none: gang semantics) or None when the job does not fit now.  No I/O, no
clock: the snapshot carries ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from trainmaster.messages import AgentHeartbeat, JobRecord, Placement, Resources, Status


@dataclass(frozen=True)
class Demand:
    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0

    def __add__(self, other: Demand) -> Demand:
        return Demand(self.cpus + other.cpus, self.memory_mb + other.memory_mb, self.gpus + other.gpus)

    def __sub__(self, other: Demand) -> Demand:
        return Demand(self.cpus - other.cpus, self.memory_mb - other.memory_mb, self.gpus - other.gpus)

    def fits_in(self, free: Demand) -> bool:
        return self.cpus <= free.cpus and self.memory_mb <= free.memory_mb and self.gpus <= free.gpus


# Until flavors are configured (a later issue), every node asks for one CPU and 512 MiB.
DEFAULT_NODE_DEMAND = Demand(cpus=1, memory_mb=512, gpus=0)

HOLDS_CAPACITY = frozenset({Status.SCHEDULED, Status.RUNNING, Status.STOPPING})


def node_demand(resources: Resources) -> Demand:
    return DEFAULT_NODE_DEMAND


@dataclass(frozen=True)
class AgentView:
    agent_id: str
    host: str
    pool: str
    capacity: Demand
    last_seen: float

    @staticmethod
    def of(hb: AgentHeartbeat, last_seen: float) -> AgentView:
        return AgentView(hb.agent_id, hb.host, hb.pool, Demand(hb.cpus, hb.memory_mb, len(hb.gpus)), last_seen)


@dataclass(frozen=True)
class Snapshot:
    agents: Mapping[str, AgentView]
    used: Mapping[str, Demand] = field(default_factory=dict)
    now: float = 0.0
    agent_timeout_s: float = 15.0

    def alive(self, agent: AgentView) -> bool:
        return self.now - agent.last_seen <= self.agent_timeout_s

    def free(self, agent: AgentView) -> Demand:
        return agent.capacity - self.used.get(agent.agent_id, Demand())


def used_by(records: Iterable[JobRecord]) -> dict[str, Demand]:
    """Capacity held on each agent by placed jobs that have not ended."""
    used: dict[str, Demand] = {}
    for record in records:
        if record.status not in HOLDS_CAPACITY:
            continue
        demand = node_demand(record.spec.resources)
        for p in record.placements:
            used[p.agent_id] = used.get(p.agent_id, Demand()) + demand
    return used


def place(snapshot: Snapshot, resources: Resources) -> list[Placement] | None:
    """Bin-packing gang placement: each node goes to the live agent of the requested pool with the
    least CPU left after placing it (ties by agent id, so the result is deterministic)."""
    demand = node_demand(resources)
    candidates = sorted(
        (a for a in snapshot.agents.values() if a.pool == resources.pool and snapshot.alive(a)),
        key=lambda a: a.agent_id,
    )
    free = {a.agent_id: snapshot.free(a) for a in candidates}
    placements: list[Placement] = []
    for node in range(resources.node_count):
        fitting = [a for a in candidates if demand.fits_in(free[a.agent_id])]
        if not fitting:
            return None
        best = min(fitting, key=lambda a: (free[a.agent_id].cpus - demand.cpus, a.agent_id))
        free[best.agent_id] = free[best.agent_id] - demand
        placements.append(Placement(node=node, agent_id=best.agent_id, host=best.host))
    return placements
