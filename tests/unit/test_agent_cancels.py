"""Which runs a Cancel stops on the agent, and how long it is remembered
(services.executor_agent.cancels)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.executor_agent.cancels import CANCEL_MEMORY_S, RememberedCancel, remember, stops


def cancel(seq: int = 10, attempt: int | None = None, at: float = 0.0) -> RememberedCancel:
    return RememberedCancel(seq=seq, reason="user", at=at, attempt=attempt)


def test_a_cancel_stops_what_was_assigned_before_it() -> None:
    assert stops(cancel(seq=10), assign_seq=9, attempt=1)
    assert not stops(cancel(seq=10), assign_seq=11, attempt=1)  # an old Cancel, redelivered
    assert not stops(cancel(seq=10), assign_seq=10, attempt=1)


def test_a_cancel_of_an_attempt_spares_later_attempts() -> None:
    assert stops(cancel(attempt=2), assign_seq=1, attempt=2)
    assert stops(cancel(attempt=2), assign_seq=1, attempt=1)
    assert not stops(cancel(attempt=2), assign_seq=1, attempt=3)
    assert stops(cancel(attempt=None), assign_seq=1, attempt=99)


@given(st.integers(0, 100), st.integers(0, 100), st.integers(1, 5), st.one_of(st.none(), st.integers(1, 5)))
def test_a_cancel_stops_only_earlier_assigns(cancel_seq: int, assign_seq: int, attempt: int,
                                             cancelled_attempt: int | None) -> None:
    if stops(cancel(seq=cancel_seq, attempt=cancelled_attempt), assign_seq, attempt):
        assert assign_seq < cancel_seq
        assert cancelled_attempt is None or attempt <= cancelled_attempt


def test_cancels_are_forgotten_after_a_while_and_the_latest_one_of_a_job_is_kept() -> None:
    cancels = remember({}, "old", cancel(at=0.0), now=0.0)
    cancels = remember(cancels, "job", cancel(seq=1, at=10.0), now=10.0)
    cancels = remember(cancels, "job", cancel(seq=2, at=20.0), now=20.0)
    assert {job: c.seq for job, c in cancels.items()} == {"old": 10, "job": 2}
    later = remember(cancels, "new", cancel(at=CANCEL_MEMORY_S), now=CANCEL_MEMORY_S)
    assert sorted(later) == ["job", "new"]
    assert sorted(cancels) == ["job", "old"]  # not changed in place
