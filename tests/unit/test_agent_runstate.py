"""A node run's states on the agent (services.executor_agent.runstate), and its run folder as their
record (runfolder): the states read from the marks, what a repeated Assign and a restarted agent
do in each, and the files an older agent left being read the same."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.executor_agent.launch import RunKey
from services.executor_agent.runfolder import RunFolder
from services.executor_agent.runstate import (
    AssignAction,
    Mark,
    RecoveryAction,
    RunState,
    on_assign,
    on_recovery,
    state_of,
)
from trainmaster.messages import Algorithm, Assign, JobRequest, NodeReport

S = RunState
marks = st.frozensets(st.sampled_from(list(Mark)))


def assign() -> Assign:
    spec = JobRequest(name="n", algorithm=Algorithm(engine="pytorch", code_dir="/c", boot_file="train.py"))
    return Assign(job_id="job-1", attempt=2, node=1, node_count=2, spec=spec, name="n", version="V001")


def exited(code: int = 0) -> NodeReport:
    return NodeReport(agent_id="a", job_id="job-1", attempt=2, node=1, state="exited", exit_code=code)


@pytest.mark.parametrize(("written", "state"), [
    ((), S.NEW),
    ((Mark.ASSIGNMENT,), S.ASSIGNED),
    ((Mark.ASSIGNMENT, Mark.CONTAINER), S.LAUNCHED),
    ((Mark.ASSIGNMENT, Mark.PID), S.LAUNCHED),
    ((Mark.ASSIGNMENT, Mark.CONTAINER, Mark.PID), S.LAUNCHED),
    ((Mark.ASSIGNMENT, Mark.PID, Mark.EXIT), S.EXITED),
    ((Mark.EXIT,), S.EXITED),  # refused, or cancelled, before it was planned
    ((Mark.ASSIGNMENT, Mark.PID, Mark.EXIT, Mark.REPORTED), S.REPORTED),
    ((Mark.EXIT, Mark.REPORTED), S.REPORTED),
])
def test_a_run_is_in_the_state_of_its_furthest_mark(written: tuple[Mark, ...], state: RunState) -> None:
    assert state_of(frozenset(written)) is state


@given(marks, st.sampled_from(list(Mark)))
def test_writing_a_mark_never_moves_a_run_back(before: frozenset[Mark], mark: Mark) -> None:
    # marks are only added: a run read back from disk is never behind what was read before
    assert state_of(before | {mark}) >= state_of(before)


@given(marks)
def test_a_repeated_assign_never_starts_a_run_that_exited(written: frozenset[Mark]) -> None:
    state = state_of(written)
    assert on_assign(state, running_here=True) is AssignAction.RESEND_RUNNING
    action = on_assign(state, running_here=False)
    assert (action is AssignAction.RESEND_EXIT) == (Mark.EXIT in written or Mark.REPORTED in written)
    assert (action is AssignAction.START) == (state < S.EXITED)


@pytest.mark.parametrize(("state", "action"), [
    (S.NEW, RecoveryAction.NOTHING),  # nothing was accepted: the Assign comes again
    (S.ASSIGNED, RecoveryAction.REPORT_LOST),  # it was preparing when the agent died
    (S.LAUNCHED, RecoveryAction.REPORT_LOST),
    (S.EXITED, RecoveryAction.RESEND_EXIT),
    (S.REPORTED, RecoveryAction.NOTHING),
])
def test_a_restarted_agent_reports_what_a_previous_one_left(state: RunState, action: RecoveryAction) -> None:
    assert on_recovery(state) is action


def test_the_folder_records_each_transition(tmp_path: Path) -> None:
    key = RunKey("job-1", 2, 1)
    folder = RunFolder.of(tmp_path, key)
    assert folder.state() is S.NEW and folder.container() is None and folder.pid() is None
    folder.record_assignment(assign())
    assert folder.state() is S.ASSIGNED and RunKey.of(folder.assignment()) == key
    folder.record_container("tm-job-1-2-1")
    folder.record_pid(4242)
    assert folder.state() is S.LAUNCHED
    assert (folder.container(), folder.pid()) == ("tm-job-1-2-1", 4242)
    folder.record_exit(exited(137))
    assert folder.state() is S.EXITED and folder.exit_report() == exited(137)
    folder.record_reported()
    assert folder.state() is S.REPORTED
    assert [f.path for f in RunFolder.all(tmp_path)] == [tmp_path / "runs" / "job-1" / "a2-n1"]
    assert not list(folder.path.glob("*.tmp"))


def test_an_exit_is_recorded_without_an_assignment(tmp_path: Path) -> None:
    folder = RunFolder.of(tmp_path, RunKey("job-1", 2, 1))
    folder.record_exit(exited(2))
    assert folder.state() is S.EXITED


def test_the_files_an_older_agent_wrote_are_read_the_same(tmp_path: Path) -> None:
    # an agent restarted over an existing work folder must recover the runs found there
    run_dir = tmp_path / "runs" / "job-1" / "a2-n1"
    run_dir.mkdir(parents=True)
    folder = RunFolder(run_dir)
    (run_dir / "assign.json").write_bytes(b'{"job_id":"job-1","attempt":2,"node":1,"node_count":2,"name":"n",'
                                          b'"version":"V001","spec":{"name":"n"}}')
    assert folder.state() is S.ASSIGNED
    (run_dir / "container").write_text("tm-job-1-2-1\n")
    (run_dir / "pid").write_text("4242")
    assert folder.state() is S.LAUNCHED and (folder.container(), folder.pid()) == ("tm-job-1-2-1", 4242)
    (run_dir / "exit.json").write_bytes(b'{"agent_id":"a","job_id":"job-1","attempt":2,"node":1,'
                                        b'"state":"exited","exit_code":0}')
    assert folder.state() is S.EXITED and folder.exit_report() == exited(0)
    (run_dir / "exit.reported").touch()
    assert folder.state() is S.REPORTED


def test_a_garbled_mark_is_an_error_not_a_state(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    (tmp_path / "pid").write_text("not a pid")
    (tmp_path / "exit.json").write_text("{")
    with pytest.raises(ValueError):
        folder.pid()
    with pytest.raises(ValueError):
        folder.exit_report()
    with pytest.raises(OSError):
        folder.assignment()
