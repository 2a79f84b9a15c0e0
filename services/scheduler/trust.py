"""What the scheduler believes from an agent: only what the agent says about itself.

nats-server guarantees who may publish on which subject (an agent's credentials allow
``tm.agent.heartbeat.<itself>`` and ``tm.agent.status.<itself>`` only: auth/permissions.py), so
the subject names the sender; the body is the sender's word.  A heartbeat or a report whose body
names another agent than its subject is refused, and so is a report for a node the job record does
not place on that agent in that attempt.  Pure: the shell logs a refusal and acknowledges the
message (redelivering it would not make it true).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from trainmaster.messages import AgentHeartbeat, JobRecord, NodeReport, Status
from trainmaster.topology import Topology

# statuses whose record lists the nodes of its current attempt (placed, not yet given back)
_PLACED = (Status.SCHEDULED, Status.RUNNING, Status.STOPPING)


def impostor(subject: str, own_subject: str, claimed: str) -> str | None:
    """Why a message on ``subject`` that speaks for agent ``claimed`` (whose own subject is
    ``own_subject``) is refused, or None."""
    if subject != own_subject:
        return f"published on {subject}, but speaks for agent {claimed} (who publishes on {own_subject})"
    return None


def heartbeat_refusal(topo: Topology, subject: str, heartbeat: AgentHeartbeat) -> str | None:
    return impostor(subject, topo.agent_heartbeat(heartbeat.agent_id), heartbeat.agent_id)


def sender_refusal(topo: Topology, subject: str, report: NodeReport) -> str | None:
    """The part of ``judge_report`` that needs no record (checked before reading one)."""
    return impostor(subject, topo.agent_status(report.agent_id), report.agent_id)


class Verdict(enum.StrEnum):
    ACCEPT = "accept"
    STALE = "stale"  # of an attempt (or of nodes) the record no longer holds: it changes nothing
    REFUSE = "refuse"  # the agent claims a node it was never given, or speaks for another


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str | None = None


def judge_report(topo: Topology, subject: str, report: NodeReport, record: JobRecord) -> Judgement:
    """A node report against the job record it would change.

    Only the current attempt's placements are known (an earlier attempt's are not kept), so a
    report of an earlier attempt cannot be checked; it is stale, and the state machine ignores it
    anyway.  A later attempt than the record's was never placed: refused."""
    why = sender_refusal(topo, subject, report)
    if why is not None:
        return Judgement(Verdict.REFUSE, why)
    node = f"node {report.node} of job {report.job_id} attempt {report.attempt}"
    if report.attempt > record.attempt:
        return Judgement(Verdict.REFUSE, f"{node}: the job is only at attempt {record.attempt}")
    if report.attempt < record.attempt:
        return Judgement(Verdict.STALE, f"{node}: the job is at attempt {record.attempt}")
    placed = next((n for n in record.nodes if n.node == report.node), None)
    if placed is None:
        if record.status in _PLACED:
            return Judgement(Verdict.REFUSE, f"{node}: the job has no such node")
        return Judgement(Verdict.STALE, f"{node}: the job is {record.status.value}, its nodes given back")
    if placed.agent_id != report.agent_id:
        return Judgement(Verdict.REFUSE, f"{node} is placed on agent {placed.agent_id}, not on {report.agent_id}")
    return Judgement(Verdict.ACCEPT)
