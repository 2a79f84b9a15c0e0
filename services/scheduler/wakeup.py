"""When the placement loop runs a pass (pure): at once on new work, one pass for every burst of
wake-ups, and never a walk of a blocked queue for a change that cannot let anything in it fit.

A pass that ends without stopping at its batch size has placed everything that fits: the jobs left
are *blocked* on the view as it stands.  Only a change of that view can unblock one, and only some
changes can: a job that became Pending (it may fit where the others do not), capacity given back,
an agent that joined or came back, a quota that changed.  A job that went from Scheduled to Running,
a reason to wait written, a work item for a job the watch brought already: none lets a blocked job
fit, so none is worth a walk over thousands of them.  The tick and a change of leadership always
run a pass (lost agents, timeouts, the reasons and reservations that come with waiting).

Coalescing: wake-ups are only noted while a pass runs (its commit awaits the bus); the loop takes
them all at once when the pass ends, so a burst of a thousand arrivals costs one or two passes,
not a thousand, and the first arrival after an idle spell does not wait for a timer.
"""

from __future__ import annotations

from enum import Enum


class Wake(Enum):
    NEW_JOB = "new job"  # a job became Pending (new, or sent back to be retried)
    CAPACITY_FREED = "capacity freed"  # a placed job ended or gave its nodes back
    AGENT_JOINED = "agent joined"  # registered, or came back after being lost
    QUOTA_CHANGED = "quota changed"
    MORE = "more may fit"  # the last pass stopped at its batch size
    TICK = "tick"  # the periodic pass: lost agents, timeouts, reasons to wait, reservations
    LEADERSHIP = "leadership"  # this replica took or lost the lease


# what can let a blocked job fit; the tick and leadership are passes of their own
UNBLOCKING = frozenset({Wake.NEW_JOB, Wake.CAPACITY_FREED, Wake.AGENT_JOINED, Wake.QUOTA_CHANGED, Wake.MORE})
ALWAYS = frozenset({Wake.TICK, Wake.LEADERSHIP})


def pass_due(reasons: frozenset[Wake], blocked: bool) -> bool:
    """Whether the wake-ups gathered since the last pass call for a pass now."""
    if not reasons:
        return False
    if reasons & ALWAYS:
        return True
    return not blocked or bool(reasons & UNBLOCKING)


def blocked_after(queued: int, more: bool, failed_writes: int) -> bool:
    """Whether the queue is blocked after a pass: jobs are left, the pass did not stop at its batch
    size (it walked them all), and every decision it made was written (a write that failed leaves
    its job to be tried again, whatever the view says)."""
    return queued > 0 and not more and failed_writes == 0


class Wakeups:
    """The reasons noted since the last ``take``; ``signal`` is set by the first of them."""

    def __init__(self) -> None:
        self._reasons: set[Wake] = set()

    def note(self, reason: Wake) -> bool:
        """Note a reason; True when it is the first since the last ``take`` (the caller signals)."""
        first = not self._reasons
        self._reasons.add(reason)
        return first

    def take(self) -> frozenset[Wake]:
        reasons, self._reasons = frozenset(self._reasons), set()
        return reasons
