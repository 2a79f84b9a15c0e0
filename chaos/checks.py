"""The invariants, as pure functions of an ``Observation``: each returns the findings that break it.

A finding names the invariant, the job (or request, or process) and what was seen, so the table can
count them and the report can show the first few.  Nothing here is lenient on purpose: a check
that cannot tell (say, a node killed before it wrote its end time) only uses what it can prove
(the boot file's lock), and says nothing rather than guessing."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass

from chaos.model import TERMINAL, JobEvent, NodeRun, Observation

# invariant names, in the order the report lists them
REQUEST_LOST = "request-lost"  # acked by the server, never accepted nor rejected
NOT_TERMINAL = "not-terminal"  # accepted, no terminal state by the deadline
TERMINAL_MISMATCH = "terminal-mismatch"  # two different terminal states (events vs record)
EVENT_MISSING = "terminal-event-missing"  # terminal record, no terminal event on tm.events.job.<id>
EVENT_DUPLICATE = "terminal-event-duplicate"  # more than one terminal event
CONCURRENT_NODE = "concurrent-node"  # one (job, attempt, node) ran twice at the same time
CHARGE_MISSING = "charge-missing"  # ran and ended, never charged
CHARGE_DUPLICATE = "charge-duplicate"  # charged more than once
CHARGE_UNEXPECTED = "charge-unexpected"  # charged without ever running
WEBHOOK_MISSING = "webhook-missing"  # a subscribed terminal event never reached the receiver
WEBHOOK_ID_CHANGED = "webhook-id-changed"  # repeats of one event came with different webhook-ids
LEFTOVER = "leftover-process"  # something still running after teardown
# seen and reported, not an invariant of the contract: a retried attempt starting while a node of
# the attempt before still runs (an agent that was stopped, not dead, does that)
ATTEMPTS_OVERLAP = "attempts-overlap"
UNEXPECTED_EXIT = "unexpected-exit"  # a process died that no fault hit (restarted by the harness)

INVARIANTS = (REQUEST_LOST, NOT_TERMINAL, TERMINAL_MISMATCH, EVENT_MISSING, EVENT_DUPLICATE, CONCURRENT_NODE,
              CHARGE_MISSING, CHARGE_DUPLICATE, CHARGE_UNEXPECTED, WEBHOOK_MISSING, WEBHOOK_ID_CHANGED, LEFTOVER)
INFORMATIONAL = frozenset({ATTEMPTS_OVERLAP, UNEXPECTED_EXIT})
# the events that end a job (``tm.job.billed`` and late ``node_exited`` events carry a terminal
# status too, but they are not a change of status)
TERMINAL_TYPES = frozenset({"tm.job.succeeded", "tm.job.failed", "tm.job.stopped"})


@dataclass(frozen=True)
class Finding:
    invariant: str
    subject: str
    detail: str


def terminal_events(obs: Observation) -> dict[str, list[JobEvent]]:
    """Terminal events per job, in stream order."""
    out: dict[str, list[JobEvent]] = defaultdict(list)
    for event in sorted(obs.events, key=lambda e: e.seq):
        if event.type in TERMINAL_TYPES:
            out[event.job_id].append(event)
    return out


def check_requests(obs: Observation) -> list[Finding]:
    return [Finding(REQUEST_LOST, s.request_id, f"acked at {s.acked_at:.3f}, no tm.request.accepted/rejected")
            for s in obs.submissions if s.job_id is None and s.rejected is None]


def check_terminal(obs: Observation) -> list[Finding]:
    """Every accepted job ends exactly once: one terminal state, one terminal event."""
    findings: list[Finding] = []
    ends = terminal_events(obs)
    for sub in obs.accepted():
        job_id = sub.job_id
        assert job_id is not None
        events = ends.get(job_id, [])
        record = obs.records.get(job_id)
        record_status = record.status if record is not None else None
        if not events and record_status not in TERMINAL:
            findings.append(Finding(NOT_TERMINAL, job_id, f"{sub.kind} job, record status {record_status}"))
            continue
        if not events:
            findings.append(Finding(EVENT_MISSING, job_id, f"record is {record_status}, no terminal event"))
        if len(events) > 1:
            ids = [e.id for e in events]
            findings.append(Finding(EVENT_DUPLICATE, job_id, f"{len(events)} terminal events: {ids}"))
        statuses = {e.status for e in events} | ({record_status} if record_status in TERMINAL else set())
        if len(statuses) > 1 or (events and record_status not in TERMINAL):
            findings.append(Finding(TERMINAL_MISMATCH, job_id,
                                    f"events {[e.status for e in events]}, record {record_status}"))
    return findings


def check_nodes(obs: Observation) -> list[Finding]:
    """No (job, attempt, node) ran twice at the same time.  Proof: the boot file's lock (held
    until its process dies, however it dies) or two runs whose known intervals overlap."""
    findings: list[Finding] = []
    by_node: dict[tuple[str, int, int], list[NodeRun]] = defaultdict(list)
    for run in obs.node_runs:
        by_node[(run.job_id, run.attempt, run.node)].append(run)
    for (job_id, attempt, node), runs in sorted(by_node.items()):
        where = f"attempt {attempt} node {node}"
        clashes = [r.pid for r in runs if r.clash]
        if clashes:
            findings.append(Finding(CONCURRENT_NODE, job_id, f"{where}: pids {clashes} found the node's lock held"))
            continue
        ordered = sorted(runs, key=lambda r: r.start)
        for before, after in itertools.pairwise(ordered):
            if before.end is not None and after.start < before.end:
                findings.append(Finding(CONCURRENT_NODE, job_id,
                                        f"{where}: pid {after.pid} started while pid {before.pid} ran"))
    by_job_node: dict[tuple[str, int], list[NodeRun]] = defaultdict(list)
    for run in obs.node_runs:
        by_job_node[(run.job_id, run.node)].append(run)
    for (job_id, node), runs in sorted(by_job_node.items()):
        ordered = sorted(runs, key=lambda r: r.start)
        for before, after in itertools.pairwise(ordered):
            if before.attempt != after.attempt and before.end is not None and after.start < before.end:
                findings.append(Finding(ATTEMPTS_OVERLAP, job_id, f"node {node}: attempt {after.attempt} started "
                                        f"{before.end - after.start:.1f}s before attempt {before.attempt} ended"))
    return findings


def check_billing(obs: Observation) -> list[Finding]:
    """Every job that ended after running is charged exactly once; no other job is charged."""
    findings: list[Finding] = []
    for sub in obs.accepted():
        job_id = sub.job_id
        assert job_id is not None
        record = obs.records.get(job_id)
        charged = obs.charges.get(job_id, 0)
        if charged > 1:
            findings.append(Finding(CHARGE_DUPLICATE, job_id, f"{charged} ledger charges"))
        if record is None or record.status not in TERMINAL:
            continue
        if record.ran and charged == 0:
            findings.append(Finding(CHARGE_MISSING, job_id, f"{record.status} after running, no ledger charge "
                                    f"(record billed: {record.billed})"))
        elif not record.ran and charged:
            findings.append(Finding(CHARGE_UNEXPECTED, job_id, f"never ran, {charged} ledger charge(s)"))
    return findings


def check_webhooks(obs: Observation) -> list[Finding]:
    """Every terminal event of a subscribed job reaches the receiver at least once, and every
    repeat of one event carries the same webhook-id."""
    findings: list[Finding] = []
    ids_by_event: dict[str, set[str]] = defaultdict(set)
    for receipt in obs.receipts:
        ids_by_event[receipt.event_id].add(receipt.webhook_id)
    for job_id, events in sorted(terminal_events(obs).items()):
        record = obs.records.get(job_id)
        if record is not None and not record.subscribed:
            continue
        for event in {e.id: e for e in events}.values():
            if event.id not in ids_by_event:
                findings.append(Finding(WEBHOOK_MISSING, job_id, f"event {event.id} ({event.status}) not delivered"))
    for event_id, webhook_ids in sorted(ids_by_event.items()):
        if len(webhook_ids) > 1:
            findings.append(Finding(WEBHOOK_ID_CHANGED, event_id.rsplit(".", 1)[0],
                                    f"event {event_id} came with webhook-ids {sorted(webhook_ids)}"))
    return findings


def check_leftovers(obs: Observation) -> list[Finding]:
    return [Finding(LEFTOVER, line.split(" ", 1)[0], line) for line in obs.leftovers]


def check_all(obs: Observation) -> list[Finding]:
    return [*check_requests(obs), *check_terminal(obs), *check_nodes(obs), *check_billing(obs),
            *check_webhooks(obs), *check_leftovers(obs)]


def count(findings: list[Finding]) -> Counter[str]:
    return Counter(f.invariant for f in findings)


def failed(findings: list[Finding]) -> bool:
    return any(f.invariant not in INFORMATIONAL for f in findings)


# ------------------------------------------------------------------------------ timing
def first_terminal_at(obs: Observation) -> dict[str, float]:
    return {job_id: events[0].time for job_id, events in terminal_events(obs).items()}


def in_flight(obs: Observation, at: float) -> list[str]:
    """Jobs accepted before ``at`` that had not ended by then."""
    ended = first_terminal_at(obs)
    return [s.job_id for s in obs.accepted() if s.job_id and s.acked_at <= at and ended.get(s.job_id, at + 1) > at]


def recover_s(obs: Observation, fault_at: float) -> float | None:
    """From the fault to the first end of a job submitted after it: how long until the system
    does useful work for new requests again.  None when no such job ended."""
    ended = first_terminal_at(obs)
    later = [ended[s.job_id] for s in obs.accepted() if s.job_id in ended and s.acked_at > fault_at]
    return min(later) - fault_at if later else None


def settle_s(obs: Observation, fault_at: float) -> float | None:
    """From the fault until the last job that was in flight at the fault ended; None when one never did."""
    ended = first_terminal_at(obs)
    flying = in_flight(obs, fault_at)
    if any(j not in ended for j in flying):
        return None
    return max((ended[j] - fault_at for j in flying), default=0.0)
