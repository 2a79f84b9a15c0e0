"""The state of one node run on this agent, as a small pure state machine.

A run records how far it got as marks in its run folder (``runfolder`` reads and writes them);
the furthest mark present is the run's state:

    NEW -> ASSIGNED -> LAUNCHED -> EXITED -> REPORTED
    NEW | ASSIGNED | LAUNCHED -> EXITED     (refused, cancelled before it started, lost)

ASSIGNED: the assignment is written (before anything is prepared).  LAUNCHED: what a restarted
agent must clean up is known (the container's name, the process group).  EXITED: the exit report
is written.  REPORTED: it was published.  Marks are only ever added, never removed, so a state
read back from disk only moves forward; the memory of a previous agent process is the folder.

No I/O here: the marks come in as plain data, and the decisions say what the agent does.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum, IntEnum


class RunState(IntEnum):
    NEW = 0
    ASSIGNED = 1
    LAUNCHED = 2
    EXITED = 3
    REPORTED = 4


class Mark(Enum):
    """What a run folder can record, in the order the agent writes it."""

    ASSIGNMENT = "assignment"
    CONTAINER = "container"  # its name, written before the container is started
    PID = "pid"  # the process group of the node's process
    EXIT = "exit"  # the exit report
    REPORTED = "reported"  # the exit report was published


STATE_OF_MARK: dict[Mark, RunState] = {
    Mark.ASSIGNMENT: RunState.ASSIGNED,
    Mark.CONTAINER: RunState.LAUNCHED,
    Mark.PID: RunState.LAUNCHED,
    Mark.EXIT: RunState.EXITED,
    Mark.REPORTED: RunState.REPORTED,
}

# 137: a node lost with its agent was SIGKILLed with it (the death signal), so the job's retry
# policy (retry_exit_codes, 137 by default) decides as for any kill
LOST_EXIT_CODE = 137
LOST_REASON = "lost: the agent restarted while this node ran"


def state_of(marks: Collection[Mark]) -> RunState:
    """The state a run folder holding ``marks`` is in: its furthest mark."""
    return max((STATE_OF_MARK[mark] for mark in marks), default=RunState.NEW)


class AssignAction(Enum):
    RESEND_RUNNING = "re-send its running report"
    RESEND_EXIT = "re-send its exit report"
    START = "start it"


def on_assign(state: RunState, running_here: bool) -> AssignAction:
    """What an Assign does with its run: commands arrive at least once, so an Assign of a run that
    runs or ran here only repeats the last report.  A folder an earlier start left short of its
    exit (a crash before the ack) is started over."""
    if running_here:
        return AssignAction.RESEND_RUNNING
    if state >= RunState.EXITED:
        return AssignAction.RESEND_EXIT
    return AssignAction.START


class RecoveryAction(Enum):
    NOTHING = "nothing"
    RESEND_EXIT = "re-send its exit report"
    REPORT_LOST = "kill what is left of it and report it lost"


def on_recovery(state: RunState) -> RecoveryAction:
    """What an agent starting over a work folder does with a run a previous agent process left.

    It never re-attaches: the node's pipes died with that agent, so a run that was assigned or
    launched is lost (``LOST_EXIT_CODE``); an exit that never got out is re-sent."""
    if state in (RunState.ASSIGNED, RunState.LAUNCHED):
        return RecoveryAction.REPORT_LOST
    if state is RunState.EXITED:
        return RecoveryAction.RESEND_EXIT
    return RecoveryAction.NOTHING
