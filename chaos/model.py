"""What a run observed, as plain data: the input of the invariant checks (``checks.py``).

The collectors (``collect.py``) fill these from the events stream, the job records, the accounts
ledger, the node run records the boot file leaves behind and the webhook receiver; the checks and
the table never touch a process or a socket, so they are unit-tested with hand-made records."""

from __future__ import annotations

from dataclasses import dataclass, field

TERMINAL = frozenset({"Succeeded", "Failed", "Stopped"})


@dataclass(frozen=True)
class Submission:
    """One ``tm.jobs.submit`` the server acknowledged (``acked_at``), and what became of it."""

    request_id: str
    kind: str  # short | long | multi
    acked_at: float
    job_id: str | None = None  # from tm.request.accepted
    rejected: str | None = None  # the error code of tm.request.rejected


@dataclass(frozen=True)
class JobEvent:
    """One message of ``tm.events.job.<id>`` (``seq``: its stream sequence)."""

    id: str
    job_id: str
    type: str
    status: str
    time: float
    seq: int


@dataclass(frozen=True)
class RecordView:
    """What the job record (``tm.jobs.get``, i.e. the KV) says about a job."""

    job_id: str
    status: str
    ran: bool  # entered Running at least once
    billed: bool  # the record carries its billing
    subscribed: bool = True


@dataclass(frozen=True)
class NodeRun:
    """One start of a node's boot file: written by the boot file itself."""

    job_id: str
    attempt: int
    node: int
    pid: int
    start: float
    end: float | None  # None: killed before it finished
    clash: bool  # it found the (job, attempt, node) lock held by another live process


@dataclass(frozen=True)
class Receipt:
    """One POST the webhook receiver answered 2xx."""

    webhook_id: str
    event_id: str  # the job event's id (``tmeventid``)
    job_id: str
    at: float


@dataclass
class Observation:
    """Everything one fault scenario saw, collected after the load drained."""

    submissions: list[Submission] = field(default_factory=list)
    events: list[JobEvent] = field(default_factory=list)
    records: dict[str, RecordView] = field(default_factory=dict)
    charges: dict[str, int] = field(default_factory=dict)  # job id -> ledger entries charging it
    node_runs: list[NodeRun] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)  # processes that died without our fault
    notes: list[str] = field(default_factory=list)

    def accepted(self) -> list[Submission]:
        return [s for s in self.submissions if s.job_id is not None]
