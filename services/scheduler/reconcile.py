"""Pure decisions about placed jobs: lost agents, timeouts, which agents to cancel.

Time is passed in.  The shell turns each decision into a state change (``AgentLost``,
``TimedOut``), which the state machine judges against the retry policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from trainmaster.messages import JobRecord, Status

S = Status


def silent_agents(agents: Iterable[str], last_seen: Mapping[str, float], now: float, timeout_s: float,
                  default_seen: float) -> list[str]:
    """Agents not heard from for longer than ``timeout_s``.  An agent never heard from (known only
    from a placement, e.g. after this scheduler started) counts from ``default_seen``."""
    return sorted(a for a in set(agents) if now - last_seen.get(a, default_seen) > timeout_s)


def live_nodes_on(record: JobRecord, agent_id: str) -> list[int]:
    """Nodes of the current attempt on ``agent_id`` that have not ended."""
    if record.status not in (S.SCHEDULED, S.RUNNING, S.STOPPING):
        return []
    return [n.node for n in record.nodes if n.agent_id == agent_id and n.state != "exited"]


def agents_to_cancel(record: JobRecord, *, except_node: int | None = None) -> list[str]:
    """Agents that still run a node of ``record``'s attempt (all of them but ``except_node``)."""
    return sorted({n.agent_id for n in record.nodes if n.state != "exited" and n.node != except_node})


def running_since(record: JobRecord) -> float | None:
    """When the current attempt started to run: the first Running entry after its placement."""
    since = None
    for entry in reversed(record.history):
        if entry.change == "placed":
            break
        if entry.status == S.RUNNING:
            since = entry.at
    return since


def run_deadline(record: JobRecord) -> float | None:
    """When the current attempt times out: ``max_run_time_s`` after it started to run.  The time
    spent Pending or being placed and started does not count; each retry starts the clock anew."""
    limit = record.spec.max_run_time_s
    if limit is None or record.status != S.RUNNING:
        return None
    since = running_since(record)
    return None if since is None else since + limit


def timed_out(record: JobRecord, now: float) -> bool:
    deadline = run_deadline(record)
    return deadline is not None and now >= deadline
