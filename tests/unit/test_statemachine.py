"""The job state machine (libs/trainmaster/statemachine.py): a pure function, tested as one."""

from __future__ import annotations

import functools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainmaster.limits import MAX_REASON_CHARS
from trainmaster.messages import (
    AgentLost,
    HistoryEntry,
    JobRecord,
    JobRequest,
    NodeExited,
    NodeRunning,
    Placed,
    Placement,
    PlacementImpossible,
    Rejected,
    Resources,
    RetryPolicy,
    Status,
    StopRequested,
    TimedOut,
    Validated,
    Violation,
    Waiting,
)
from trainmaster.statemachine import (
    ALLOWED,
    IllegalTransition,
    StaleChange,
    applied_entry,
    change_kind,
    event_type,
    new_record,
    transition,
)

S = Status
T0 = 1_700_000_000.0


# ------------------------------------------------------------------------- helpers
def fresh(nodes: int = 1, retry: RetryPolicy | None = None) -> JobRecord:
    spec = JobRequest(name="iris", resources=Resources(node_count=nodes), retry=retry or RetryPolicy())
    return new_record(job_id="job-1", name="iris", version="V001", spec=spec, request_id="req-1", now=T0)


class Driver:
    """Applies changes one after another with a ticking clock."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.now = record.updated_at

    def __call__(self, change) -> JobRecord:
        self.now += 1.0
        self.record = transition(self.record, change, self.now)
        return self.record


def placements(nodes: int) -> list[Placement]:
    return [Placement(node=i, agent_id=f"agent-{i}", host=f"host-{i}") for i in range(nodes)]


def record_in(status: Status, nodes: int = 1, retry: RetryPolicy | None = None) -> JobRecord:
    """A record that reached ``status`` through legal transitions."""
    d = Driver(fresh(nodes, retry))
    if status == S.INITIALIZING:
        return d.record
    if status == S.FAILED:
        return d(Rejected("verdict", violations=[Violation("name", "required", "give a name")]))
    d(Validated("verdict"))
    if status == S.PENDING:
        return d.record
    if status == S.STOPPED:
        return d(StopRequested("stop", reason="user"))
    d(Placed("place-1", attempt=1, placements=placements(nodes)))
    if status == S.SCHEDULED:
        return d.record
    for i in range(nodes):
        d(NodeRunning(f"run-{i}", attempt=1, node=i))
    if status == S.RUNNING:
        return d.record
    if status == S.STOPPING:
        return d(StopRequested("stop", reason="user"))
    if status == S.SUCCEEDED:
        for i in range(nodes):
            d(NodeExited(f"exit-{i}", attempt=1, node=i, exit_code=0))
        return d.record
    raise AssertionError(status)


def check_history(record: JobRecord) -> None:
    assert [e.seq for e in record.history] == list(range(len(record.history)))
    assert record.history[-1].status == record.status


# every change kind, shaped to fit the record it is applied to (current attempt, node 0)
CHANGES = {
    "validated": lambda r: Validated("c"),
    "rejected": lambda r: Rejected("c", violations=[Violation("name", "required", "give a name")]),
    "placed": lambda r: Placed("c", attempt=r.attempt + 1, placements=placements(r.spec.resources.node_count)),
    "placement_impossible": lambda r: PlacementImpossible("c", reason="no agent has a GPU"),
    "node_running": lambda r: NodeRunning("c", attempt=r.attempt, node=0),
    "node_exited_ok": lambda r: NodeExited("c", attempt=r.attempt, node=0, exit_code=0),
    "node_exited_fail": lambda r: NodeExited("c", attempt=r.attempt, node=0, exit_code=3),
    "stop_requested": lambda r: StopRequested("c", reason="user"),
    "agent_lost": lambda r: AgentLost("c", attempt=r.attempt, agent_id="agent-0"),
    "timed_out": lambda r: TimedOut("c", attempt=r.attempt, limit_s=60),
}

ILLEGAL, STALE = "illegal", "stale"

# single-node job: status x change kind -> the status reached, or how it is refused
EXPECTED: dict[Status, dict[str, Status | str]] = {
    S.INITIALIZING: {
        "validated": S.PENDING, "rejected": S.FAILED, "placed": ILLEGAL, "placement_impossible": ILLEGAL,
        "node_running": STALE, "node_exited_ok": STALE, "node_exited_fail": STALE,
        "stop_requested": S.STOPPED, "agent_lost": STALE, "timed_out": STALE,
    },
    S.PENDING: {
        "validated": ILLEGAL, "rejected": ILLEGAL, "placed": S.SCHEDULED, "placement_impossible": S.FAILED,
        "node_running": STALE, "node_exited_ok": STALE, "node_exited_fail": STALE,
        "stop_requested": S.STOPPED, "agent_lost": STALE, "timed_out": STALE,
    },
    S.SCHEDULED: {
        "validated": ILLEGAL, "rejected": ILLEGAL, "placed": ILLEGAL, "placement_impossible": ILLEGAL,
        "node_running": S.RUNNING, "node_exited_ok": S.SUCCEEDED, "node_exited_fail": S.FAILED,
        "stop_requested": S.STOPPING, "agent_lost": S.FAILED, "timed_out": S.STOPPING,
    },
    S.RUNNING: {
        "validated": ILLEGAL, "rejected": ILLEGAL, "placed": ILLEGAL, "placement_impossible": ILLEGAL,
        "node_running": S.RUNNING, "node_exited_ok": S.SUCCEEDED, "node_exited_fail": S.FAILED,
        "stop_requested": S.STOPPING, "agent_lost": S.FAILED, "timed_out": S.STOPPING,
    },
    S.STOPPING: {
        "validated": ILLEGAL, "rejected": ILLEGAL, "placed": ILLEGAL, "placement_impossible": ILLEGAL,
        "node_running": S.STOPPING, "node_exited_ok": S.STOPPED, "node_exited_fail": S.STOPPED,
        "stop_requested": STALE, "agent_lost": S.STOPPED, "timed_out": STALE,
    },
    **{
        terminal: {
            "validated": ILLEGAL, "rejected": ILLEGAL, "placed": ILLEGAL, "placement_impossible": ILLEGAL,
            "node_running": STALE, "node_exited_ok": STALE, "node_exited_fail": STALE,
            "stop_requested": ILLEGAL, "agent_lost": STALE, "timed_out": STALE,
        }
        for terminal in (S.SUCCEEDED, S.FAILED, S.STOPPED)
    },
}

TABLE = [(status, kind, expected) for status, row in EXPECTED.items() for kind, expected in row.items()]


def test_table_covers_every_status_and_change_kind():
    assert set(EXPECTED) == set(Status)
    assert all(set(row) == set(CHANGES) for row in EXPECTED.values())
    kinds = {change_kind(make(fresh())) for make in CHANGES.values()}
    assert kinds == {"validated", "rejected", "placed", "placement_impossible", "node_running",
                     "node_exited", "stop_requested", "agent_lost", "timed_out"}


# ------------------------------------------------------------------------- the table
@pytest.mark.parametrize(("status", "kind", "expected"), TABLE, ids=[f"{s.value}-{k}" for s, k, _ in TABLE])
def test_transition_table(status, kind, expected):
    record = record_in(status)
    assert record.status == status
    change = CHANGES[kind](record)
    before = msgspec.json.encode(record)
    if expected == ILLEGAL:
        with pytest.raises(IllegalTransition):
            transition(record, change, T0 + 100)
    elif expected == STALE:
        with pytest.raises(StaleChange):
            transition(record, change, T0 + 100)
    else:
        after = transition(record, change, T0 + 100)
        assert after.status == expected
        assert expected == status or expected in ALLOWED[status]
        assert after.updated_at == T0 + 100
        assert len(after.history) == len(record.history) + 1
        entry = after.history[-1]
        assert entry == HistoryEntry(seq=len(record.history), at=T0 + 100, change=change_kind(change),
                                     status=expected, change_id="c", reason=entry.reason)
        check_history(after)
    assert msgspec.json.encode(record) == before, "transition must never mutate its input"


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.FAILED, S.STOPPED])
def test_terminal_states_refuse_everything(status):
    assert ALLOWED[status] == frozenset()
    record = record_in(status)
    for make in CHANGES.values():
        with pytest.raises((IllegalTransition, StaleChange)):
            transition(record, make(record), T0 + 100)
    # node reports of any attempt and any node are refused too
    for attempt in range(3):
        for node in range(2):
            with pytest.raises((IllegalTransition, StaleChange)):
                transition(record, NodeRunning("x", attempt=attempt, node=node), T0 + 100)
            with pytest.raises((IllegalTransition, StaleChange)):
                transition(record, NodeExited("x", attempt=attempt, node=node, exit_code=1), T0 + 100)


def test_allowed_edges_match_the_documented_diagram():
    assert ALLOWED == {
        S.INITIALIZING: {S.PENDING, S.FAILED, S.STOPPED},
        S.PENDING: {S.SCHEDULED, S.FAILED, S.STOPPED},
        S.SCHEDULED: {S.RUNNING, S.SUCCEEDED, S.FAILED, S.STOPPING, S.PENDING},
        S.RUNNING: {S.SUCCEEDED, S.FAILED, S.STOPPING, S.PENDING},
        S.STOPPING: {S.STOPPED, S.FAILED},
        S.SUCCEEDED: set(),
        S.FAILED: set(),
        S.STOPPED: set(),
    }
    assert {s for s in Status if s.terminal} == {S.SUCCEEDED, S.FAILED, S.STOPPED}


# ------------------------------------------------------------------------- new record, history
def test_new_record_starts_initializing_with_a_submitted_entry():
    record = fresh()
    assert record.status == S.INITIALIZING
    assert record.created_at == record.updated_at == T0
    assert record.history == [HistoryEntry(0, T0, "submitted", S.INITIALIZING, "submitted:req-1")]
    assert record.attempt == 0 and record.nodes == [] and record.placements == []


def test_history_seq_increments_by_one_and_records_change_ids():
    d = Driver(fresh(2))
    ids = ["verdict", "place-1", "run-0", "run-1", "exit-0", "exit-1"]
    d(Validated(ids[0]))
    d(Placed(ids[1], attempt=1, placements=placements(2)))
    d(NodeRunning(ids[2], attempt=1, node=0))
    d(NodeRunning(ids[3], attempt=1, node=1))
    d(NodeExited(ids[4], attempt=1, node=0, exit_code=0))
    d(NodeExited(ids[5], attempt=1, node=1, exit_code=0))
    history = d.record.history
    check_history(d.record)
    assert [e.change_id for e in history] == ["submitted:req-1", *ids]
    assert [e.change for e in history] == ["submitted", "validated", "placed", "node_running", "node_running",
                                           "node_exited", "node_exited"]
    assert [e.status for e in history] == [S.INITIALIZING, S.PENDING, S.SCHEDULED, S.SCHEDULED, S.RUNNING,
                                           S.RUNNING, S.SUCCEEDED]
    assert [e.at for e in history] == [T0 + i for i in range(7)]


# ------------------------------------------------------------------------- idempotence helpers
def test_applied_entry_finds_an_applied_change_by_its_id():
    d = Driver(fresh())
    verdict = Validated("verdict")
    assert applied_entry(d.record, verdict) is None
    d(verdict)
    d(Placed("place-1", attempt=1, placements=placements(1)))
    entry = applied_entry(d.record, verdict)
    assert entry is not None and entry.seq == 1 and entry.change == "validated"
    # the same id with another body is still "applied": one verdict per job, whatever it says
    assert applied_entry(d.record, Rejected("verdict", violations=[])) == entry
    assert applied_entry(d.record, Validated("other")) is None


def test_applied_entry_returns_the_latest_entry_with_that_id():
    record = fresh()
    entries = [*record.history, HistoryEntry(1, T0, "x", S.INITIALIZING, "dup"),
               HistoryEntry(2, T0, "y", S.INITIALIZING, "dup")]
    record = msgspec.structs.replace(record, history=entries)
    assert applied_entry(record, Validated("dup")).seq == 2


# ------------------------------------------------------------------------- event types
def test_event_type_names():
    d = Driver(fresh(2))
    d(Validated("verdict"))
    d(Placed("p", attempt=1, placements=placements(2)))
    d(NodeRunning("r0", attempt=1, node=0))
    d(NodeRunning("r1", attempt=1, node=1))
    d(StopRequested("stop", reason="user"))
    d(NodeExited("e0", attempt=1, node=0, exit_code=143))
    d(NodeExited("e1", attempt=1, node=1, exit_code=143))
    r = d.record
    assert [event_type(r, e) for e in r.history] == [
        "tm.job.submitted", "tm.job.pending", "tm.job.scheduled", "tm.job.node_running", "tm.job.running",
        "tm.job.stopping", "tm.job.node_exited", "tm.job.stopped",
    ]


@pytest.mark.parametrize(("status", "expected"), [
    (S.FAILED, "tm.job.failed"), (S.SUCCEEDED, "tm.job.succeeded"), (S.STOPPED, "tm.job.stopped"),
])
def test_event_type_of_terminal_entries(status, expected):
    r = record_in(status)
    assert event_type(r, r.history[-1]) == expected


# ------------------------------------------------------------------------- verdicts
def test_validated_records_warnings_and_rejected_records_violations():
    warn = Violation("output_path", "output_not_empty", "not empty")
    ok = transition(fresh(), Validated("verdict", warnings=[warn]), T0 + 1)
    assert ok.status == S.PENDING and ok.warnings == [warn] and ok.failure_reason is None
    bad = [Violation("name", "required", "give a name"), Violation("log_path", "required", "give a log path")]
    rejected = transition(fresh(), Rejected("verdict", violations=bad), T0 + 1)
    assert rejected.status == S.FAILED
    assert rejected.violations == bad
    assert rejected.failure_reason == "validation failed: name: give a name; log_path: give a log path"
    assert rejected.history[-1].reason == rejected.failure_reason


def test_placement_impossible_fails_with_the_reason():
    r = transition(record_in(S.PENDING), PlacementImpossible("pi", reason="no GPU pool"), T0 + 9)
    assert r.status == S.FAILED and r.failure_reason == "no GPU pool" and r.history[-1].reason == "no GPU pool"


# ------------------------------------------------------------------------- placements, attempts
def test_placed_sets_attempt_nodes_and_placements():
    r = transition(record_in(S.PENDING, nodes=3), Placed("p", attempt=1, placements=placements(3)[::-1]), T0 + 5)
    assert r.status == S.SCHEDULED and r.attempt == 1
    assert [(n.node, n.agent_id, n.state, n.exit_code) for n in r.nodes] == [
        (0, "agent-0", "assigned", None), (1, "agent-1", "assigned", None), (2, "agent-2", "assigned", None)]
    assert len(r.placements) == 3


@pytest.mark.parametrize("nodes_placed", [[0], [0, 0], [0, 1, 1], [1, 2], [0, 1, 2, 3]])
def test_placement_must_cover_every_node_exactly_once(nodes_placed):
    record = record_in(S.PENDING, nodes=2)
    bad = [Placement(node=i, agent_id="a", host="h") for i in nodes_placed]
    with pytest.raises(IllegalTransition):
        transition(record, Placed("p", attempt=1, placements=bad), T0 + 5)


@pytest.mark.parametrize("attempt", [0, 2, 5, -1])
def test_placement_for_another_attempt_is_stale(attempt):
    with pytest.raises(StaleChange):
        transition(record_in(S.PENDING), Placed("p", attempt=attempt, placements=placements(1)), T0 + 5)


def test_stale_attempts_are_ignored_after_a_retry():
    d = Driver(record_in(S.RUNNING, nodes=2, retry=RetryPolicy(max_retries=1)))
    d(AgentLost("lost-a1", attempt=1, agent_id="agent-1"))
    assert d.record.status == S.PENDING and d.record.nodes == [] and d.record.placements == []
    assert d.record.attempt == 1
    # reports of attempt 1 arriving now are stale, whatever the state
    with pytest.raises(StaleChange):
        transition(d.record, NodeExited("late", attempt=1, node=0, exit_code=1), d.now + 1)
    # a placement for attempt 1 again is stale; attempt 2 is the next one
    with pytest.raises(StaleChange):
        transition(d.record, Placed("p1", attempt=1, placements=placements(2)), d.now + 1)
    d(Placed("p2", attempt=2, placements=placements(2)))
    assert d.record.status == S.SCHEDULED and d.record.attempt == 2
    for stale in (NodeRunning("old-r", attempt=1, node=0),
                  NodeExited("old-e", attempt=1, node=0, exit_code=0),
                  NodeExited("old-f", attempt=1, node=1, exit_code=9)):
        with pytest.raises(StaleChange):
            transition(d.record, stale, d.now + 1)
    d(NodeRunning("r0", attempt=2, node=0))
    d(NodeRunning("r1", attempt=2, node=1))
    assert d.record.status == S.RUNNING


def test_report_for_a_node_the_job_does_not_have_is_illegal():
    record = record_in(S.SCHEDULED, nodes=2)
    with pytest.raises(IllegalTransition):
        transition(record, NodeRunning("r", attempt=1, node=2), T0 + 9)
    with pytest.raises(IllegalTransition):
        transition(record, NodeExited("e", attempt=1, node=-1, exit_code=0), T0 + 9)


# ------------------------------------------------------------------------- multi-node jobs
def test_multi_node_job_runs_only_when_all_nodes_run_and_succeeds_only_when_all_exit_zero():
    d = Driver(record_in(S.SCHEDULED, nodes=3))
    d(NodeRunning("r0", attempt=1, node=0))
    assert d.record.status == S.SCHEDULED
    d(NodeRunning("r2", attempt=1, node=2))
    assert d.record.status == S.SCHEDULED
    d(NodeRunning("r1", attempt=1, node=1))
    assert d.record.status == S.RUNNING
    assert [n.state for n in d.record.nodes] == ["running"] * 3
    d(NodeExited("e1", attempt=1, node=1, exit_code=0))
    assert d.record.status == S.RUNNING
    d(NodeExited("e0", attempt=1, node=0, exit_code=0))
    assert d.record.status == S.RUNNING and d.record.exit_code is None
    d(NodeExited("e2", attempt=1, node=2, exit_code=0))
    assert d.record.status == S.SUCCEEDED and d.record.exit_code == 0
    assert [(n.state, n.exit_code) for n in d.record.nodes] == [("exited", 0)] * 3
    assert d.record.failure_reason is None


def test_a_node_that_finishes_before_another_starts_still_counts():
    d = Driver(record_in(S.SCHEDULED, nodes=2))
    d(NodeExited("e0", attempt=1, node=0, exit_code=0))
    assert d.record.status == S.SCHEDULED
    d(NodeRunning("r1", attempt=1, node=1))
    assert d.record.status == S.RUNNING
    d(NodeExited("e1", attempt=1, node=1, exit_code=0))
    assert d.record.status == S.SUCCEEDED


@pytest.mark.parametrize(("reason", "expected_reason"), [
    ("out of memory", "out of memory"),
    (None, "node 1 exited with code 137"),
])
def test_any_non_zero_exit_fails_the_job_with_reason_and_exit_code(reason, expected_reason):
    d = Driver(record_in(S.RUNNING, nodes=3))
    d(NodeExited("e0", attempt=1, node=0, exit_code=0))
    d(NodeExited("e1", attempt=1, node=1, exit_code=137, reason=reason))
    assert d.record.status == S.FAILED
    assert d.record.exit_code == 137
    assert d.record.failure_reason == expected_reason
    assert d.record.history[-1].reason == expected_reason
    assert event_type(d.record, d.record.history[-1]) == "tm.job.failed"
    # the nodes still running report later: ignored
    with pytest.raises(StaleChange):
        transition(d.record, NodeExited("e2", attempt=1, node=2, exit_code=143), d.now + 1)


def test_non_zero_exit_before_running_fails_the_job():
    r = transition(record_in(S.SCHEDULED), NodeExited("e", attempt=1, node=0, exit_code=2), T0 + 50)
    assert r.status == S.FAILED and r.exit_code == 2 and r.failure_reason == "node 0 exited with code 2"


def test_a_late_running_report_does_not_revive_an_exited_node():
    d = Driver(record_in(S.SCHEDULED, nodes=2))
    d(NodeRunning("r1", attempt=1, node=1))
    d(NodeExited("e0", attempt=1, node=0, exit_code=0))  # node 0 finished before its running report
    assert d.record.status == S.RUNNING
    try:
        d(NodeRunning("r0", attempt=1, node=0))  # the late report (e.g. redelivered after a retry)
    except StaleChange:
        pass  # refusing it is fine too
    assert [n.state for n in d.record.nodes] == ["exited", "running"]
    d(NodeExited("e1", attempt=1, node=1, exit_code=0))
    assert d.record.status == S.SUCCEEDED


# ------------------------------------------------------------------------- stopping
@pytest.mark.parametrize("status", [S.INITIALIZING, S.PENDING])
def test_stop_before_anything_runs_stops_at_once(status):
    r = transition(record_in(status), StopRequested("stop", reason="changed my mind"), T0 + 50)
    assert r.status == S.STOPPED
    assert r.history[-1].reason == "changed my mind"
    assert event_type(r, r.history[-1]) == "tm.job.stopped"


@pytest.mark.parametrize("status", [S.SCHEDULED, S.RUNNING])
def test_stop_while_placed_or_running_goes_through_stopping(status):
    d = Driver(record_in(status))
    d(StopRequested("stop", reason="user asked"))
    assert d.record.status == S.STOPPING
    with pytest.raises(StaleChange):
        transition(d.record, StopRequested("stop-again", reason="again"), d.now + 1)
    d(NodeExited("e0", attempt=1, node=0, exit_code=-15))
    assert d.record.status == S.STOPPED
    assert d.record.history[-1].reason == "user asked"
    assert d.record.failure_reason is None


def test_stopping_a_multi_node_job_waits_for_every_node():
    d = Driver(record_in(S.RUNNING, nodes=3))
    d(StopRequested("stop", reason="user"))
    d(NodeExited("e0", attempt=1, node=0, exit_code=143))
    assert d.record.status == S.STOPPING
    d(NodeExited("e1", attempt=1, node=1, exit_code=0))
    assert d.record.status == S.STOPPING
    d(NodeExited("e2", attempt=1, node=2, exit_code=1))
    assert d.record.status == S.STOPPED and d.record.history[-1].reason == "user"


# ------------------------------------------------------------------------- property
change_ids = st.sampled_from(["a", "b", "c", "verdict", "x"])
reasons = st.sampled_from(["user", "agent lost", "oom", "no capacity"])
exit_codes = st.sampled_from([0, 0, 0, 1, 137, -9])
some_warnings = st.lists(st.just(Violation("output_path", "output_not_empty", "w")), max_size=1)
some_violations = st.lists(st.just(Violation("name", "required", "m")), max_size=2)


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """``one_of`` with weights (``one_of`` itself picks its distinct branches evenly)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(min_value=0, max_value=len(pool) - 1).flatmap(pool.__getitem__)


def change_for(record: JobRecord, plausible: bool) -> st.SearchStrategy:
    """A change for ``record``: a plausible one for its status (so that sequences get far), or any
    change at all, with attempts and nodes that may be wrong."""
    return _change_for(record.status, record.attempt, record.spec.resources.node_count, plausible)


@functools.cache
def _change_for(status: Status, attempt: int, count: int, plausible: bool) -> st.SearchStrategy:
    if plausible:
        attempts = st.just(attempt)
        nodes = st.integers(min_value=0, max_value=count - 1)
        placed_nodes = st.just(list(range(count)))
        next_attempt = st.just(attempt + 1)
    else:
        attempts = st.integers(min_value=attempt - 1, max_value=attempt + 2)
        nodes = st.integers(min_value=-1, max_value=3)
        placed_nodes = st.lists(st.integers(min_value=-1, max_value=3), max_size=4) | st.just(list(range(count)))
        next_attempt = attempts
    reports = [
        st.builds(NodeRunning, change_ids, attempt=attempts, node=nodes),
        st.builds(NodeExited, change_ids, attempt=attempts, node=nodes, exit_code=exit_codes,
                  reason=st.none() | reasons),
    ]
    stop = st.builds(StopRequested, change_ids, reason=reasons)
    lost = st.builds(AgentLost, change_ids, attempt=attempts, agent_id=st.sampled_from(["a0", "a1", "a9"]))
    timeout = st.builds(TimedOut, change_ids, attempt=attempts, limit_s=st.just(60.0))
    verdicts = [st.builds(Validated, change_ids, warnings=some_warnings),
                st.builds(Rejected, change_ids, violations=some_violations)]
    placement = st.builds(
        lambda cid, attempt, ns: Placed(cid, attempt=attempt,
                                        placements=[Placement(node=n, agent_id=f"a{n}", host="h") for n in ns]),
        change_ids, next_attempt, placed_nodes)
    impossible = st.builds(PlacementImpossible, change_ids, reason=reasons)
    if not plausible or status.terminal:
        return st.one_of(*verdicts, placement, impossible, *reports, stop, lost, timeout)
    if status == S.INITIALIZING:
        return weighted((6, verdicts[0]), (1, verdicts[1]), (1, stop))
    if status == S.PENDING:
        return weighted((6, placement), (1, impossible), (1, stop))
    # Scheduled, Running, Stopping: mostly node reports
    return weighted((6, reports[0]), (6, reports[1]), (1, stop), (1, lost), (1, timeout))


@settings(max_examples=300, deadline=None)
@given(node_count=st.integers(min_value=1, max_value=3), data=st.data(),
       retry=st.builds(RetryPolicy, max_retries=st.integers(0, 2),
                       retry_exit_codes=st.lists(st.sampled_from([1, 137, 143]), max_size=2),
                       retry_on_agent_lost=st.booleans()))
def test_random_change_sequences_keep_the_invariants(node_count, data, retry):
    record = fresh(node_count, retry)
    now = T0
    steps = data.draw(st.integers(min_value=1, max_value=50), label="steps")
    for _ in range(steps):
        plausible = data.draw(st.integers(min_value=0, max_value=4), label="dice") > 0
        change = data.draw(change_for(record, plausible), label="change")
        now += 1.0
        before = msgspec.json.encode(record)
        try:
            updated = transition(record, change, now)
        except (IllegalTransition, StaleChange):
            assert msgspec.json.encode(record) == before
            continue
        assert msgspec.json.encode(record) == before, "transition must never mutate its input"
        # never out of a terminal state, never along an edge absent from ALLOWED
        assert not record.status.terminal, f"{record.status} accepted {change!r}"
        assert updated.status == record.status or updated.status in ALLOWED[record.status]
        # history: gap-free, one entry per applied change, carrying its id
        assert len(updated.history) == len(record.history) + 1
        assert updated.history[:-1] == record.history
        entry = updated.history[-1]
        assert (entry.seq, entry.at, entry.change_id, entry.change, entry.status) == (
            len(record.history), now, change.change_id, change_kind(change), updated.status)
        check_history(updated)
        assert event_type(updated, entry).startswith("tm.job.")
        # node bookkeeping
        if updated.status in (S.SCHEDULED, S.RUNNING, S.STOPPING):
            assert sorted(n.node for n in updated.nodes) == list(range(node_count))
        if updated.status == S.RUNNING and record.status == S.SCHEDULED:
            assert all(n.state != "assigned" for n in updated.nodes)
        if updated.status == S.SUCCEEDED:
            assert all(n.state == "exited" and n.exit_code == 0 for n in updated.nodes)
            assert updated.exit_code == 0
        if updated.status == S.FAILED and record.status != S.FAILED:
            assert updated.failure_reason
        if updated.status == S.PENDING and record.status != S.INITIALIZING:
            assert updated.nodes == [] and updated.placements == []
        assert updated.attempt >= record.attempt
        # automatic retries (a retryable exit, a lost agent) never exceed the policy's budget
        retries = [e for prev, e in zip(updated.history, updated.history[1:], strict=False)
                   if e.status == S.PENDING and prev.status in (S.SCHEDULED, S.RUNNING)
                   and e.change in ("node_exited", "agent_lost")]
        assert len(retries) <= retry.max_retries
        if updated.status == S.PENDING and entry.change in ("node_exited", "agent_lost"):
            assert "retrying (retry" in (entry.reason or "")
        if updated.status == S.FAILED and record.status == S.STOPPING:
            assert any(e.change == "timed_out" for e in updated.history)
        record = updated


# ------------------------------------------------------------------------- retries, lost agents, timeouts
RETRY_1 = RetryPolicy(max_retries=1)


@pytest.mark.parametrize("status", [S.SCHEDULED, S.RUNNING])
@pytest.mark.parametrize(("change", "expected"), [
    (lambda r: NodeExited("e", attempt=r.attempt, node=0, exit_code=137), S.PENDING),
    (lambda r: NodeExited("e", attempt=r.attempt, node=0, exit_code=143), S.PENDING),
    (lambda r: NodeExited("e", attempt=r.attempt, node=0, exit_code=1), S.FAILED),
    (lambda r: NodeExited("e", attempt=r.attempt, node=0, exit_code=2), S.FAILED),
    (lambda r: NodeExited("e", attempt=r.attempt, node=0, exit_code=126), S.FAILED),
    (lambda r: NodeExited("e", attempt=r.attempt, node=0, exit_code=127), S.FAILED),
    (lambda r: AgentLost("l", attempt=r.attempt, agent_id="agent-0"), S.PENDING),
], ids=["137", "143", "1", "2", "126", "127", "agent-lost"])
def test_retryable_failures_requeue_while_retries_are_left(status, change, expected):
    record = record_in(status, retry=RETRY_1)
    after = transition(record, change(record), T0 + 100)
    assert after.status == expected
    if expected == S.PENDING:
        assert after.nodes == [] and after.placements == [] and after.failure_reason is None
        assert after.history[-1].reason.endswith("retrying (retry 1 of 1)")
        assert event_type(after, after.history[-1]) == "tm.job.pending"
    else:
        assert after.failure_reason and "retr" not in after.failure_reason


def test_a_retry_is_a_new_attempt_and_the_old_attempt_is_fenced_off():
    d = Driver(record_in(S.RUNNING, nodes=2, retry=RetryPolicy(max_retries=2)))
    d(AgentLost("lost-a1", attempt=1, agent_id="agent-1"))
    assert d.record.status == S.PENDING and d.record.attempt == 1
    assert d.record.history[-1].reason == "agent agent-1 lost (node 1); retrying (retry 1 of 2)"
    d(Placed("p2", attempt=2, placements=placements(2)))
    # the late report of attempt 1 (the surviving node, or the lost agent coming back) is ignored
    for late in (NodeExited("late", attempt=1, node=0, exit_code=0), NodeRunning("late-r", attempt=1, node=1),
                 AgentLost("lost-again", attempt=1, agent_id="agent-1")):
        with pytest.raises(StaleChange):
            transition(d.record, late, d.now + 1)
    d(NodeRunning("r0", attempt=2, node=0))
    d(NodeExited("oom", attempt=2, node=1, exit_code=137, reason="killed: out of memory"))
    assert d.record.status == S.PENDING
    assert d.record.history[-1].reason == "killed: out of memory; retrying (retry 2 of 2)"
    d(Placed("p3", attempt=3, placements=placements(2)))
    d(NodeExited("oom3", attempt=3, node=0, exit_code=137))
    assert d.record.status == S.FAILED and d.record.exit_code == 137
    assert d.record.failure_reason == "node 0 exited with code 137; no retries left (3 attempts)"


def test_agent_lost_without_retries_fails_with_the_reason():
    d = Driver(record_in(S.RUNNING, nodes=3))
    d(AgentLost("l", attempt=1, agent_id="agent-2"))
    assert d.record.status == S.FAILED and d.record.failure_reason == "agent agent-2 lost (node 2)"
    assert d.record.exit_code is None


def test_agent_lost_is_not_retried_when_the_policy_says_so():
    record = record_in(S.RUNNING, retry=RetryPolicy(max_retries=3, retry_on_agent_lost=False))
    after = transition(record, AgentLost("l", attempt=1, agent_id="agent-0"), T0 + 100)
    assert after.status == S.FAILED and after.failure_reason == "agent agent-0 lost (node 0)"


def test_agent_lost_for_an_agent_without_live_nodes_is_stale():
    d = Driver(record_in(S.RUNNING, nodes=2, retry=RETRY_1))
    with pytest.raises(StaleChange):
        transition(d.record, AgentLost("l", attempt=1, agent_id="agent-7"), d.now + 1)
    d(NodeExited("e1", attempt=1, node=1, exit_code=0))
    with pytest.raises(StaleChange):  # its node ended before: nothing was lost
        transition(d.record, AgentLost("l", attempt=1, agent_id="agent-1"), d.now + 1)


def test_a_lost_agent_while_stopping_counts_its_nodes_as_stopped():
    d = Driver(record_in(S.RUNNING, nodes=2, retry=RETRY_1))
    d(StopRequested("stop", reason="user"))
    d(AgentLost("l", attempt=1, agent_id="agent-0"))
    assert d.record.status == S.STOPPING and [n.state for n in d.record.nodes] == ["exited", "running"]
    d(NodeExited("e1", attempt=1, node=1, exit_code=143))
    assert d.record.status == S.STOPPED and d.record.history[-1].reason == "user"


@pytest.mark.parametrize("status", [S.SCHEDULED, S.RUNNING])
def test_a_timeout_stops_every_node_then_fails(status):
    d = Driver(record_in(status, nodes=2, retry=RetryPolicy(max_retries=5)))
    d(TimedOut("t", attempt=1, limit_s=90))
    assert d.record.status == S.STOPPING
    assert d.record.failure_reason == "timed out: ran longer than max_run_time_s (90 s)"
    with pytest.raises(StaleChange):  # a user's stop now changes nothing
        transition(d.record, StopRequested("stop", reason="user"), d.now + 1)
    d(NodeExited("e0", attempt=1, node=0, exit_code=143))
    assert d.record.status == S.STOPPING
    d(NodeExited("e1", attempt=1, node=1, exit_code=137))  # a timeout is never retried
    assert d.record.status == S.FAILED
    assert d.record.history[-1].reason == "timed out: ran longer than max_run_time_s (90 s)"
    assert [event_type(d.record, e) for e in d.record.history[-3:]] == [
        "tm.job.stopping", "tm.job.node_exited", "tm.job.failed"]


def test_a_timeout_of_another_attempt_is_stale():
    record = record_in(S.RUNNING)
    with pytest.raises(StaleChange):
        transition(record, TimedOut("t", attempt=0, limit_s=5), T0 + 100)


# ------------------------------------------------------------------------- why a Pending job waits
def test_a_reason_to_wait_is_set_without_a_history_entry():
    record = record_in(S.PENDING)
    waiting = transition(record, Waiting("waiting", reason="waiting for capacity in pool gpu"), T0 + 100)
    assert waiting.pending_reason == "waiting for capacity in pool gpu"
    # no change of state: the status, the history (so no event) and the time of the last change stay
    assert (waiting.status, waiting.history, waiting.updated_at) == (record.status, record.history, record.updated_at)
    assert msgspec.structs.replace(waiting, pending_reason=None) == record
    other = transition(waiting, Waiting("waiting", reason="held by the quota of account a"), T0 + 200)
    assert other.pending_reason == "held by the quota of account a" and other.history == record.history


def test_the_same_reason_again_is_stale_so_nothing_is_written():
    waiting = transition(record_in(S.PENDING), Waiting("waiting", reason="r"), T0 + 100)
    with pytest.raises(StaleChange):
        transition(waiting, Waiting("waiting", reason="r"), T0 + 200)


@pytest.mark.parametrize("status", [s for s in Status if s != S.PENDING])
def test_a_reason_to_wait_for_a_job_that_does_not_wait_is_stale(status):
    with pytest.raises(StaleChange):
        transition(record_in(status), Waiting("waiting", reason="r"), T0 + 100)


def test_a_long_reason_is_clipped():
    waiting = transition(record_in(S.PENDING), Waiting("waiting", reason="x" * 10_000), T0 + 100)
    assert waiting.pending_reason is not None and len(waiting.pending_reason) <= MAX_REASON_CHARS


@pytest.mark.parametrize(("change", "status"), [
    (lambda r: Placed("p", attempt=1, placements=placements(1)), S.SCHEDULED),
    (lambda r: PlacementImpossible("x", reason="no such pool"), S.FAILED),
    (lambda r: StopRequested("stop", reason="user"), S.STOPPED),
])
def test_leaving_pending_clears_the_reason(change, status):
    waiting = transition(record_in(S.PENDING), Waiting("waiting", reason="r"), T0 + 100)
    after = transition(waiting, change(waiting), T0 + 200)
    assert after.status == status and after.pending_reason is None


def test_a_retried_job_waits_again_without_its_old_reason():
    d = Driver(record_in(S.PENDING, retry=RETRY_1))
    d(Waiting("waiting", reason="waiting for capacity in pool cpu"))
    d(Placed("p1", attempt=1, placements=placements(1)))
    d(NodeExited("e", attempt=1, node=0, exit_code=137))
    assert d.record.status == S.PENDING and d.record.pending_reason is None


@settings(max_examples=200, deadline=None)
@given(node_count=st.integers(min_value=1, max_value=2), data=st.data())
def test_reasons_never_change_the_state_and_belong_to_pending_jobs(node_count, data):
    """Reasons sprinkled into random change sequences: a reason adds no history entry and moves
    nothing else, and only a Pending job ever has one."""
    record = fresh(node_count, RetryPolicy(max_retries=2))
    now = T0
    for _ in range(data.draw(st.integers(min_value=1, max_value=40), label="steps")):
        now += 1.0
        if data.draw(st.booleans(), label="reason?"):
            change = Waiting("waiting", reason=data.draw(reasons, label="reason"))
            try:
                updated = transition(record, change, now)
            except StaleChange:
                assert record.status != S.PENDING or record.pending_reason == change.reason
                continue
            assert record.status == S.PENDING and updated.pending_reason == change.reason
            assert msgspec.structs.replace(updated, pending_reason=record.pending_reason) == record
        else:
            try:
                updated = transition(record, data.draw(change_for(record, plausible=True), label="change"), now)
            except (IllegalTransition, StaleChange):
                continue
            assert len(updated.history) == len(record.history) + 1
            if updated.status != record.status:
                assert updated.pending_reason is None
            else:
                assert updated.pending_reason == record.pending_reason
        assert updated.pending_reason is None or updated.status == S.PENDING
        record = updated
