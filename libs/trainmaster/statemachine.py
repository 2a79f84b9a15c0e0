"""The job state machine: one pure function from (record, change, now) to the next record.

No I/O and no clock: ``now`` is passed in.  ``jobstore.apply_change`` is the only caller that
writes; it does so with a compare-and-set on the KV revision.

    Initializing -> Pending | Failed | Stopped
    Pending      -> Scheduled | Failed | Stopped
    Scheduled    -> Running | Succeeded | Failed | Stopping | Pending
    Running      -> Succeeded | Failed | Stopping | Pending
    Stopping     -> Stopped | Failed
    Succeeded, Failed, Stopped: terminal

Retries (``retrypolicy``): a node exiting with a retryable code, or the loss of an agent running
one of the attempt's nodes, sends the job back to Pending (a new attempt is placed later; reports
of the old one are stale from then on) while retries are left, and to Failed otherwise.  A
timeout (``TimedOut``) goes through Stopping like a stop request, but ends Failed.

One change is no change of state: ``Waiting`` (the scheduler) sets ``pending_reason``, why a
Pending job is not placed yet, and adds no history entry (so no event, and the time the job became
Pending, which its reservation counts from, stays).  Any change of status clears the reason.
"""

from __future__ import annotations

import msgspec

from trainmaster.limits import MAX_REASON_CHARS, cap_violations, clip
from trainmaster.messages import (
    AgentLost,
    AnyChange,
    Billed,
    HistoryEntry,
    JobRecord,
    JobRequest,
    NodeExited,
    NodeRunning,
    NodeState,
    Placed,
    PlacementImpossible,
    Rejected,
    Status,
    StopRequested,
    TimedOut,
    Validated,
    Waiting,
)
from trainmaster.retrypolicy import (
    exhausted_note,
    exit_code_retryable,
    may_retry_agent_lost,
    may_retry_exit,
    retry_note,
)

S = Status

ALLOWED: dict[Status, frozenset[Status]] = {
    S.INITIALIZING: frozenset({S.PENDING, S.FAILED, S.STOPPED}),
    S.PENDING: frozenset({S.SCHEDULED, S.FAILED, S.STOPPED}),
    S.SCHEDULED: frozenset({S.RUNNING, S.SUCCEEDED, S.FAILED, S.STOPPING, S.PENDING}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.STOPPING, S.PENDING}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.STOPPED: frozenset(),
}


class IllegalTransition(Exception):
    """The change does not apply to the record's current status (a caller error or a race lost
    to a later state): refused, nothing written."""


class StaleChange(Exception):
    """The change belongs to a superseded attempt or arrives after the job ended: ignored."""


def new_record(
    *, job_id: str, name: str, version: str, spec: JobRequest, request_id: str, now: float,
    traceparent: str | None = None,
) -> JobRecord:
    return JobRecord(
        id=job_id,
        name=name,
        version=version,
        status=S.INITIALIZING,
        spec=spec,
        request_id=request_id,
        created_at=now,
        updated_at=now,
        history=[HistoryEntry(0, now, "submitted", S.INITIALIZING, f"submitted:{request_id}")],
        traceparent=traceparent,
    )


def applied_entry(record: JobRecord, change: AnyChange) -> HistoryEntry | None:
    """The history entry of ``change`` if it was applied already (idempotent redelivery)."""
    for entry in reversed(record.history):
        if entry.change_id == change.change_id:
            return entry
    return None


def change_kind(change: AnyChange) -> str:
    return type(change).__struct_config__.tag  # type: ignore[return-value]


def event_type(record: JobRecord, entry: HistoryEntry) -> str:
    """CloudEvents ``type`` of a history entry: the status reached, or the change itself when
    the status did not move (e.g. one node of several started)."""
    previous = record.history[entry.seq - 1].status if entry.seq > 0 else None
    if entry.seq == 0:
        return "tm.job.submitted"
    if previous != entry.status:
        return f"tm.job.{entry.status.value.lower()}"
    return f"tm.job.{entry.change}"


def transition(record: JobRecord, change: AnyChange, now: float) -> JobRecord:
    """Apply ``change`` to ``record``.  Raises IllegalTransition or StaleChange; never mutates."""
    if isinstance(change, Waiting):
        return _waiting(record, change)
    status = record.status
    updates: dict = {}
    reason: str | None = None

    match change:
        case Validated(warnings=warnings):
            _expect(record, change, S.INITIALIZING)
            new_status, updates["warnings"] = S.PENDING, list(warnings)
        case Rejected(violations=violations):
            _expect(record, change, S.INITIALIZING)
            new_status = S.FAILED
            # bounded: the record, its event and the create reply repeat them, and each must fit
            # the payload limit however many violations a request had
            violations = cap_violations(violations)
            reason = clip("validation failed: " + "; ".join(f"{v.field}: {v.message}" for v in violations),
                          MAX_REASON_CHARS)
            updates.update(violations=violations, failure_reason=reason)
        case Placed(attempt=attempt, placements=placements):
            _expect(record, change, S.PENDING)
            if attempt != record.attempt + 1:
                raise StaleChange(f"placement for attempt {attempt}, job is at attempt {record.attempt}")
            if sorted(p.node for p in placements) != list(range(record.spec.resources.node_count)):
                raise IllegalTransition("a placement must cover every node of the job exactly once")
            new_status = S.SCHEDULED
            updates.update(
                attempt=attempt,
                placements=list(placements),
                nodes=[NodeState(p.node, p.agent_id) for p in sorted(placements, key=lambda p: p.node)],
            )
        case PlacementImpossible(reason=why):
            _expect(record, change, S.PENDING)
            new_status, reason = S.FAILED, why
            updates["failure_reason"] = why
        case NodeRunning(attempt=attempt, node=node):
            _check_node_report(record, attempt, node)
            if any(n.node == node and n.state == "exited" for n in record.nodes):
                raise StaleChange(f"node {node} already exited; a late running report changes nothing")
            nodes = _set_node(record, node, state="running")
            updates["nodes"] = nodes
            all_running = all(n.state != "assigned" for n in nodes)
            new_status = S.RUNNING if status == S.SCHEDULED and all_running else status
        case NodeExited(attempt=attempt, node=node, exit_code=code, reason=why):
            _check_node_report(record, attempt, node)
            nodes = _set_node(record, node, state="exited", exit_code=code)
            updates["nodes"] = nodes
            all_exited = all(n.state == "exited" for n in nodes)
            if status == S.STOPPING:
                new_status, reason = _stop_outcome(record) if all_exited else (status, None)
            elif code != 0 and may_retry_exit(record, code):
                new_status = S.PENDING
                reason = f"{why or f'node {node} exited with code {code}'}; {retry_note(record)}"
                updates.update(nodes=[], placements=[])
            elif code != 0:
                new_status = S.FAILED
                reason = why or f"node {node} exited with code {code}"
                if exit_code_retryable(record.spec.retry, code) and record.spec.retry.max_retries:
                    reason = f"{reason}; {exhausted_note(record)}"
                updates.update(failure_reason=reason, exit_code=code)
            elif all_exited:
                new_status = S.SUCCEEDED
                updates["exit_code"] = 0
            else:  # a node finished first: the job runs once no node waits to start
                started = all(n.state != "assigned" for n in nodes)
                new_status = S.RUNNING if status == S.SCHEDULED and started else status
        case StopRequested(reason=why):
            if status.terminal:
                raise IllegalTransition(f"job {record.id} already ended ({status.value})")
            if status == S.STOPPING:
                raise StaleChange("stop already requested")
            new_status = S.STOPPED if status in (S.INITIALIZING, S.PENDING) else S.STOPPING
            reason = why
        case AgentLost(attempt=attempt, agent_id=agent):
            if attempt != record.attempt or status not in (S.SCHEDULED, S.RUNNING, S.STOPPING):
                raise StaleChange(f"agent {agent} lost: attempt {attempt}, but the job is {status.value} "
                                  f"at attempt {record.attempt}")
            lost = [n.node for n in record.nodes if n.agent_id == agent and n.state != "exited"]
            if not lost:
                raise StaleChange(f"no node of attempt {attempt} is left on agent {agent}")
            why = f"agent {agent} lost (node {', '.join(map(str, lost))})"
            if status == S.STOPPING:  # its nodes will never report: count them as exited
                nodes = [msgspec.structs.replace(n, state="exited") if n.node in lost else n for n in record.nodes]
                updates["nodes"] = nodes
                all_exited = all(n.state == "exited" for n in nodes)
                new_status, reason = _stop_outcome(record) if all_exited else (status, why)
            elif may_retry_agent_lost(record):
                new_status, reason = S.PENDING, f"{why}; {retry_note(record)}"
                updates.update(nodes=[], placements=[])
            else:
                new_status = S.FAILED
                reason = why
                if record.spec.retry.retry_on_agent_lost and record.spec.retry.max_retries:
                    reason = f"{why}; {exhausted_note(record)}"
                updates["failure_reason"] = reason
        case TimedOut(attempt=attempt, limit_s=limit):
            if attempt != record.attempt or status not in (S.SCHEDULED, S.RUNNING):
                raise StaleChange(f"timeout of attempt {attempt}, but the job is {status.value} "
                                  f"at attempt {record.attempt}")
            new_status = S.STOPPING
            reason = f"timed out: ran longer than max_run_time_s ({limit:g} s)"
            updates["failure_reason"] = reason  # the outcome once every node has stopped
        case Billed(billing=billing):
            # the charge of an ended job is recorded on it; the status does not move
            if not status.terminal:
                raise IllegalTransition(f"billed needs an ended job; job {record.id} is {status.value}")
            new_status, updates["billing"] = status, billing
        case _:
            raise IllegalTransition(f"unknown change {change!r}")

    if new_status != status and new_status not in ALLOWED[status]:
        raise IllegalTransition(f"{status.value} -> {new_status.value} is not allowed")
    if new_status != status and record.pending_reason is not None:
        updates["pending_reason"] = None  # it said why the job waited; it waits no more
    entry = HistoryEntry(
        seq=len(record.history),
        at=now,
        change=change_kind(change),
        status=new_status,
        change_id=change.change_id,
        reason=reason,
    )
    return msgspec.structs.replace(
        record, status=new_status, updated_at=now, history=[*record.history, entry], **updates
    )


def _waiting(record: JobRecord, change: Waiting) -> JobRecord:
    """The reason a Pending job waits, set without a history entry (``updated_at``, the time of the
    last entry, stays too).  Stale once the job left Pending, or when it says what the record does."""
    if record.status != S.PENDING:
        raise StaleChange(f"a reason to wait, but the job is {record.status.value}")
    reason = clip(change.reason, MAX_REASON_CHARS)
    if reason == record.pending_reason:
        raise StaleChange("the job waits for that reason already")
    return msgspec.structs.replace(record, pending_reason=reason)


def _expect(record: JobRecord, change: AnyChange, *statuses: Status) -> None:
    if record.status not in statuses:
        allowed = " or ".join(s.value for s in statuses)
        raise IllegalTransition(
            f"{change_kind(change)} needs the job {allowed}; job {record.id} is {record.status.value}"
        )


def _check_node_report(record: JobRecord, attempt: int, node: int) -> None:
    if attempt != record.attempt:
        raise StaleChange(f"report from attempt {attempt}; the job is at attempt {record.attempt}")
    if record.status.terminal:
        raise StaleChange(f"report after the job ended ({record.status.value})")
    if record.status not in (S.SCHEDULED, S.RUNNING, S.STOPPING):
        raise StaleChange(f"report while the job is {record.status.value}")
    if not any(n.node == node for n in record.nodes):
        raise IllegalTransition(f"job {record.id} has no node {node}")


def _set_node(record: JobRecord, node: int, **fields: object) -> list[NodeState]:
    return [msgspec.structs.replace(n, **fields) if n.node == node else n for n in record.nodes]


def _stop_outcome(record: JobRecord) -> tuple[Status, str | None]:
    """How a Stopping job ends once every node has stopped: Stopped (a stop request, with its
    reason) or Failed (a timeout: the reason set when it timed out)."""
    cause = next((e for e in reversed(record.history) if e.change in ("stop_requested", "timed_out")), None)
    if cause is not None and cause.change == "timed_out":
        return S.FAILED, record.failure_reason or cause.reason
    return S.STOPPED, cause.reason if cause else None
