"""Which runs a Cancel stops, and how long the agent remembers it.

Commands of one batch are handled concurrently and redelivered at will, so a Cancel may be handled
before the Assign it was published after.  Assigns and Cancels are therefore ordered by their
stream sequence, and a Cancel is remembered for a while for Assigns handled after it.  Pure: the
clock is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# how long a Cancel is remembered for an Assign that was published before it but handled after
CANCEL_MEMORY_S = 3600.0


@dataclass(frozen=True)
class RememberedCancel:
    seq: int  # stream sequence of the Cancel
    reason: str
    at: float  # monotonic clock when it was handled
    attempt: int | None  # the attempt it stops, and earlier ones; None: every attempt


def stops(cancel: RememberedCancel, assign_seq: int, attempt: int) -> bool:
    """Whether ``cancel`` stops a run of ``attempt`` whose Assign has stream sequence ``assign_seq``.

    An old Cancel, redelivered, must not stop a later Assign of the job; nor one for a superseded
    attempt (the scheduler retrying the job) stop a newer attempt placed here."""
    return cancel.seq > assign_seq and (cancel.attempt is None or attempt <= cancel.attempt)


def remember(cancels: Mapping[str, RememberedCancel], job_id: str, cancel: RememberedCancel,
             now: float, memory_s: float = CANCEL_MEMORY_S) -> dict[str, RememberedCancel]:
    """The Cancels still remembered at ``now``, with ``cancel`` as the latest of ``job_id``."""
    kept = {job: c for job, c in cancels.items() if now - c.at < memory_s}
    kept[job_id] = cancel
    return kept
