"""The record relay's decisions: which events of a record are missing from the events stream, and
whether a new job's validation must be published again."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.scheduler.relay import event_seq, follow_ups, latest_per_job
from trainmaster.messages import HistoryEntry, JobRecord, JobRequest, Resources, Status
from trainmaster.statemachine import new_record

HOUR = 3600.0


def record_with(statuses: list[Status], at: float = 1000.0, job_id: str = "job-1") -> JobRecord:
    spec = JobRequest(name="relay", resources=Resources(node_count=1))
    record = new_record(job_id=job_id, name="relay", version="V001", spec=spec, request_id="r", now=at)
    history = list(record.history)
    for i, status in enumerate(statuses, start=1):
        history.append(HistoryEntry(seq=i, at=at + i, change=f"c{i}", status=status, change_id=f"c{i}"))
    return JobRecord(**{**{f: getattr(record, f) for f in record.__struct_fields__},
                        "history": history, "status": history[-1].status})


def test_event_seq_reads_the_writers_message_id() -> None:
    assert event_seq("job-1.4", "job-1") == 4
    assert event_seq("job-1.0", "job-1") == 0
    assert event_seq("job-10.4", "job-1") is None  # another job's id that starts alike
    assert event_seq("job-1.x", "job-1") is None
    assert event_seq(None, "job-1") is None


def test_a_terminal_event_lost_after_the_write_is_published() -> None:
    record = record_with([Status.PENDING, Status.SCHEDULED, Status.RUNNING, Status.FAILED])
    todo = follow_ups(record, last_published_seq=3, now=1010.0, horizon_s=HOUR)
    assert [e.seq for e in todo.events] == [4]
    assert [e.status for e in todo.events] == [Status.FAILED]
    assert not todo.validate


def test_nothing_when_every_event_is_in_the_stream() -> None:
    record = record_with([Status.PENDING, Status.SCHEDULED])
    assert follow_ups(record, last_published_seq=2, now=1010.0, horizon_s=HOUR).events == ()


def test_a_new_job_without_any_event_gets_its_event_and_its_validation() -> None:
    record = record_with([])
    todo = follow_ups(record, last_published_seq=None, now=1000.5, horizon_s=HOUR)
    assert [e.seq for e in todo.events] == [0]
    assert todo.validate


def test_entries_older_than_the_horizon_are_never_announced() -> None:
    record = record_with([Status.PENDING, Status.FAILED], at=1000.0)
    todo = follow_ups(record, last_published_seq=None, now=1000.0 + 2 * HOUR, horizon_s=HOUR)
    assert todo.events == ()


@given(n=st.integers(min_value=0, max_value=8), last=st.one_of(st.none(), st.integers(min_value=-1, max_value=10)))
def test_missing_events_are_exactly_those_after_the_last_published_in_order(n: int, last: int | None) -> None:
    record = record_with([Status.PENDING] * n)
    seqs = [e.seq for e in follow_ups(record, last, now=1000.0 + n, horizon_s=HOUR).events]
    newest = -1 if last is None else last
    assert seqs == [s for s in range(n + 1) if s > newest]
    assert seqs == sorted(seqs)


def test_latest_per_job_keeps_the_newest_revision_of_each_job() -> None:
    old, new, other = record_with([Status.PENDING]), record_with([Status.PENDING, Status.SCHEDULED]), record_with(
        [], job_id="job-2")
    latest = latest_per_job([("job-1", 7, new), ("job-1", 5, old), ("job-2", 6, other)])
    assert latest == {"job-1": new, "job-2": other}
