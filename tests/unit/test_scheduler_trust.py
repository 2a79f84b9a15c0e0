"""What the scheduler believes from an agent (services/scheduler/trust.py): a heartbeat or a report
only from the agent its subject names, and a report only for a node the job record places on that
agent in that attempt; earlier attempts are stale (left to the state machine's fence)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.scheduler.trust import Judgement, Verdict, heartbeat_refusal, judge_report, sender_refusal
from trainmaster.messages import (
    AgentHeartbeat,
    JobRecord,
    JobRequest,
    NodeExited,
    NodeReport,
    NodeRunning,
    Placed,
    Placement,
    Resources,
    RetryPolicy,
    StopRequested,
    Validated,
)
from trainmaster.statemachine import new_record, transition
from trainmaster.topology import Topology

TOPO = Topology()
T0 = 1_000.0


def record_on(agents: list[str], retries: int = 1) -> JobRecord:
    """A job placed (attempt 1) with node i on ``agents[i]``."""
    spec = JobRequest(name="j", resources=Resources(pool="cpu", node_count=len(agents)),
                      retry=RetryPolicy(max_retries=retries))
    record = transition(new_record(job_id="job-1", name="j", version="V001", spec=spec, request_id="r", now=T0),
                        Validated("v"), T0)
    placements = [Placement(node=i, agent_id=a, host=a) for i, a in enumerate(agents)]
    return transition(record, Placed("placed.1", attempt=1, placements=placements), T0 + 1)


def report(agent_id: str, node: int = 0, attempt: int = 1, state: str = "running") -> NodeReport:
    return NodeReport(agent_id=agent_id, job_id="job-1", attempt=attempt, node=node, state=state,  # type: ignore[arg-type]
                      exit_code=0 if state == "exited" else None)


def heartbeat(agent_id: str) -> AgentHeartbeat:
    return AgentHeartbeat(agent_id, "h", "cpu", {}, 8, 1024, [], [], 0.0, 0.0)


def test_a_heartbeat_is_believed_only_from_the_agent_its_subject_names() -> None:
    assert heartbeat_refusal(TOPO, TOPO.agent_heartbeat("a1"), heartbeat("a1")) is None
    why = heartbeat_refusal(TOPO, TOPO.agent_heartbeat("a1"), heartbeat("a2"))
    assert why == "published on tm.agent.heartbeat.a1, but speaks for agent a2 (who publishes on tm.agent.heartbeat.a2)"
    # an id that is no single subject token cannot be anybody's own subject
    assert heartbeat_refusal(TOPO, TOPO.agent_heartbeat("a1"), heartbeat("a1.x")) is not None


@given(st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True), st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True))
def test_a_report_speaks_only_for_its_publisher(publisher: str, claimed: str) -> None:
    refused = sender_refusal(TOPO, TOPO.agent_status(publisher), report(claimed)) is not None
    assert refused == (publisher != claimed)


def test_a_report_of_the_agent_a_node_is_placed_on_is_accepted() -> None:
    record = record_on(["a1", "a2"])
    for node, agent in enumerate(["a1", "a2"]):
        for state in ("running", "exited"):
            judgement = judge_report(TOPO, TOPO.agent_status(agent), report(agent, node, state=state), record)
            assert judgement.verdict is Verdict.ACCEPT


def test_a_report_from_another_agents_subject_is_refused() -> None:
    record = record_on(["a1", "a2"])
    judgement = judge_report(TOPO, TOPO.agent_status("a2"), report("a1", 0), record)
    assert judgement.verdict is Verdict.REFUSE and "speaks for agent a1" in (judgement.reason or "")


def test_a_report_for_a_node_placed_on_another_agent_is_refused() -> None:
    record = record_on(["a1", "a2"])
    judgement = judge_report(TOPO, TOPO.agent_status("a2"), report("a2", node=0, state="exited"), record)
    assert judgement.verdict is Verdict.REFUSE
    assert judgement.reason == "node 0 of job job-1 attempt 1 is placed on agent a1, not on a2"
    stranger = judge_report(TOPO, TOPO.agent_status("a9"), report("a9", node=1), record)
    assert stranger.verdict is Verdict.REFUSE


def test_a_report_for_a_node_or_an_attempt_that_was_never_placed_is_refused() -> None:
    record = record_on(["a1"])
    no_node = judge_report(TOPO, TOPO.agent_status("a1"), report("a1", node=3), record)
    assert no_node == Judgement(Verdict.REFUSE, "node 3 of job job-1 attempt 1: the job has no such node")
    later = judge_report(TOPO, TOPO.agent_status("a1"), report("a1", attempt=2), record)
    assert later.verdict is Verdict.REFUSE and later.reason == (
        "node 0 of job job-1 attempt 2: the job is only at attempt 1")


def test_reports_of_an_earlier_attempt_or_given_back_nodes_are_stale() -> None:
    record = record_on(["a1"])
    retried = transition(record, NodeExited("a1.n0.exited", attempt=1, node=0, exit_code=137), T0 + 2)
    assert retried.nodes == [] and retried.attempt == 1  # back to Pending, its nodes given back
    late = judge_report(TOPO, TOPO.agent_status("a1"), report("a1", state="exited"), retried)
    assert late.verdict is Verdict.STALE
    again = transition(retried, Placed("placed.2", attempt=2, placements=[Placement(0, "a2", "a2")]), T0 + 3)
    old = judge_report(TOPO, TOPO.agent_status("a9"), report("a9", attempt=1), again)
    assert old.verdict is Verdict.STALE  # an earlier attempt's placements are not kept: unverifiable, harmless
    # the sender check comes first, whatever the attempt
    assert judge_report(TOPO, TOPO.agent_status("a1"), report("a9", attempt=1), again).verdict is Verdict.REFUSE


@pytest.mark.parametrize("agent", ["a1", "a2"])
def test_after_the_job_ended_only_its_own_agents_are_heard(agent: str) -> None:
    record = record_on(["a1"])
    running = transition(record, NodeRunning("a1.n0.running", attempt=1, node=0), T0 + 2)
    stopping = transition(running, StopRequested("stop", reason="user"), T0 + 3)
    stopped = transition(stopping, NodeExited("a1.n0.exited", attempt=1, node=0, exit_code=143), T0 + 4)
    judgement = judge_report(TOPO, TOPO.agent_status(agent), report(agent, state="exited"), stopped)
    assert judgement.verdict is (Verdict.ACCEPT if agent == "a1" else Verdict.REFUSE)
