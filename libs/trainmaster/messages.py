"""Message types of the public contract and of the internal protocol (frozen msgspec Structs).

JSON Schema for the public ones is generated from these types (``trainmaster schema``).
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

ParamValue = str | int | float | bool


# ---------------------------------------------------------------- the job request (public)
class DataSource(Struct, frozen=True, forbid_unknown_fields=True):
    """One input: a storage path (local path, ``file://`` or ``s3://``) or a dataset version."""

    path: str | None = None
    dataset: str | None = None
    version: str | None = None


class Algorithm(Struct, frozen=True, forbid_unknown_fields=True):
    """Where the training code comes from.  ``framework``: an engine plus a code directory and a
    boot file (the "common framework" source of the seed)."""

    source: Literal["framework", "preset", "custom"] = "framework"
    engine: str | None = None
    engine_version: str | None = None
    code_dir: str | None = None
    boot_file: str | None = None
    preset: str | None = None
    image: str | None = None
    command: list[str] | None = None


class Resources(Struct, frozen=True, forbid_unknown_fields=True):
    pool: str = "cpu"
    flavor: str | None = None
    node_count: Annotated[int, Meta(ge=1, le=1024)] = 1


class Subscription(Struct, frozen=True, forbid_unknown_fields=True):
    topic: str
    events: list[str] = []


class JobRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.jobs.create`` and ``tm.jobs.submit``.

    Required fields are checked by the validator (all missing ones reported at once), so the
    decoder only rejects wrong types and unknown fields."""

    name: str | None = None
    description: str = ""
    data: list[DataSource] = []
    algorithm: Algorithm = Algorithm()
    parameters: dict[str, ParamValue] = {}
    output_path: str | None = None
    log_path: str | None = None
    resources: Resources = Resources()
    subscription: Subscription | None = None
    billing_mode: str = "on-demand"


# ---------------------------------------------------------------- errors (public)
class Violation(Struct, frozen=True):
    field: str
    code: str
    message: str


class ErrorBody(Struct, frozen=True):
    code: str
    message: str
    details: list[Violation] = []


class ErrorReply(Struct, frozen=True, omit_defaults=True):
    """Every error reply: ``{"error": {"code", "message", "details": [{"field", "code", "message"}]}}``."""

    error: ErrorBody
    job: JobSummary | None = None


# ---------------------------------------------------------------- the job record
class Status(enum.StrEnum):
    INITIALIZING = "Initializing"
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    STOPPING = "Stopping"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def terminal(self) -> bool:
        return self in (Status.SUCCEEDED, Status.FAILED, Status.STOPPED)


class HistoryEntry(Struct, frozen=True):
    seq: int
    at: float
    change: str
    status: Status
    change_id: str
    reason: str | None = None


class Placement(Struct, frozen=True):
    node: int
    agent_id: str
    host: str


class NodeState(Struct, frozen=True):
    node: int
    agent_id: str
    state: Literal["assigned", "running", "exited"] = "assigned"
    exit_code: int | None = None


class JobRecord(Struct, frozen=True):
    id: str
    name: str
    version: str
    status: Status
    spec: JobRequest
    request_id: str
    created_at: float
    updated_at: float
    history: list[HistoryEntry] = []
    attempt: int = 0
    nodes: list[NodeState] = []
    placements: list[Placement] = []
    violations: list[Violation] = []
    warnings: list[Violation] = []
    failure_reason: str | None = None
    exit_code: int | None = None
    traceparent: str | None = None


class JobSummary(Struct, frozen=True):
    """What ``tm.jobs.create`` replies and ``tm.jobs.list`` lists."""

    id: str
    name: str
    version: str
    status: Status
    created_at: float
    updated_at: float
    failure_reason: str | None = None


def summary_of(record: JobRecord) -> JobSummary:
    return JobSummary(
        id=record.id,
        name=record.name,
        version=record.version,
        status=record.status,
        created_at=record.created_at,
        updated_at=record.updated_at,
        failure_reason=record.failure_reason,
    )


# ---------------------------------------------------------------- read/command API (public)
class GetRequest(Struct, frozen=True, forbid_unknown_fields=True):
    id: str


class ListRequest(Struct, frozen=True, forbid_unknown_fields=True):
    status: Status | None = None
    name: str | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 50
    offset: Annotated[int, Meta(ge=0)] = 0


class ListReply(Struct, frozen=True):
    jobs: list[JobSummary]
    total: int


class StopRequest(Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    reason: str = "stopped by user"


# ---------------------------------------------------------------- state changes
class Change(Struct, frozen=True, tag_field="kind"):
    """A request to change a job record.  ``change_id`` makes applying it idempotent."""

    change_id: str


class Validated(Change, tag="validated"):
    warnings: list[Violation] = []


class Rejected(Change, tag="rejected"):
    violations: list[Violation]


class Placed(Change, tag="placed"):
    attempt: int
    placements: list[Placement]


class PlacementImpossible(Change, tag="placement_impossible"):
    reason: str


class NodeRunning(Change, tag="node_running"):
    attempt: int
    node: int


class NodeExited(Change, tag="node_exited"):
    attempt: int
    node: int
    exit_code: int
    reason: str | None = None


class StopRequested(Change, tag="stop_requested"):
    reason: str


class Requeued(Change, tag="requeued"):
    reason: str


AnyChange = Validated | Rejected | Placed | PlacementImpossible | NodeRunning | NodeExited | StopRequested | Requeued


# ---------------------------------------------------------------- internal work items
class WorkItem(Struct, frozen=True):
    """Body of ``tm.work.*``: which job to look at (the record in KV is the truth)."""

    job_id: str


# ---------------------------------------------------------------- agent protocol
class GpuInfo(Struct, frozen=True):
    index: int
    model: str
    memory_mb: int


class AgentHeartbeat(Struct, frozen=True):
    agent_id: str
    host: str
    pool: str
    labels: dict[str, str]
    cpus: int
    memory_mb: int
    gpus: list[GpuInfo]
    running: list[str]  # "<job_id>/<node>/<attempt>" of what runs now
    sent_at: float
    started_at: float


class Assign(Struct, frozen=True, tag="assign"):
    job_id: str
    attempt: int
    node: int
    node_count: int
    spec: JobRequest
    name: str
    version: str


class Cancel(Struct, frozen=True, tag="cancel"):
    job_id: str
    reason: str


AgentCommand = Assign | Cancel


class NodeReport(Struct, frozen=True):
    """Body of ``tm.agent.status.<agent>``."""

    agent_id: str
    job_id: str
    attempt: int
    node: int
    state: Literal["running", "exited"]
    exit_code: int | None = None
    reason: str | None = None


class AgentList(Struct, frozen=True):
    agents: list[AgentHeartbeat]


# ---------------------------------------------------------------- CloudEvents (public)
class JobEventData(Struct, frozen=True):
    job_id: str
    name: str
    version: str
    status: Status
    previous_status: Status | None
    change: str
    reason: str | None = None
    violations: list[Violation] = []
    warnings: list[Violation] = []
    exit_code: int | None = None
    output_path: str | None = None
    log_path: str | None = None


class RequestEventData(Struct, frozen=True):
    request_id: str
    job: JobSummary | None = None
    error: ErrorBody | None = None


class CloudEvent(Struct, frozen=True):
    """CloudEvents 1.0, structured JSON mode: ``tm.events.job.<id>`` carries ``JobEventData``,
    ``tm.events.request.<request_id>`` carries ``RequestEventData``."""

    id: str
    source: str
    type: str
    subject: str
    time: str
    data: msgspec.Raw | JobEventData | RequestEventData
    specversion: str = "1.0"
    datacontenttype: str = "application/json"


class JobCloudEvent(CloudEvent, frozen=True):
    data: JobEventData


class RequestCloudEvent(CloudEvent, frozen=True):
    data: RequestEventData


_encoder = msgspec.json.Encoder()


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


# ================================================================ notifications (issue 5)
# Topics API (public, request/reply on ``tm.topics.<verb>``), the stored topic record, delivery
# records and the internal delivery task.  Kept in one section so other changes do not collide.
TopicName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Protocol = Literal["webhook", "email"]
SubscriptionState = Literal["active", "disabled"]
DeliveryState = Literal["retrying", "delivered", "dead", "disabled", "skipped"]


class TopicCreate(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.topics.create``."""

    name: TopicName
    description: Annotated[str, Meta(max_length=1024)] = ""


class TopicRef(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.topics.get``, ``tm.topics.subscriptions`` and ``tm.topics.delete`` (``force``:
    delete a topic that still has subscriptions, removing them too)."""

    name: str
    force: bool = False


class SubscribeRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.topics.subscribe``: ``endpoint`` is an http(s) URL (webhook) or an address (email).
    ``secret`` (webhook only): ``whsec_`` + base64 of 24-64 bytes; generated when absent."""

    topic: str
    protocol: Protocol
    endpoint: Annotated[str, Meta(max_length=2048)]
    secret: str | None = None


class UnsubscribeRequest(Struct, frozen=True, forbid_unknown_fields=True):
    topic: str
    subscription_id: str


class DeliveriesRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.topics.deliveries``: the newest deliveries of a topic (``dead``: only dead letters)."""

    topic: str
    dead: bool = False
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class TopicSubscription(Struct, frozen=True):
    """A subscription as stored (with its signing secret) inside its topic's record."""

    id: str
    protocol: Protocol
    endpoint: str
    created_at: float
    secret: str | None = None
    state: SubscriptionState = "active"
    disabled_at: float | None = None
    disabled_reason: str | None = None


class TopicRecord(Struct, frozen=True):
    """Value of ``tm_topics[<name>]``."""

    name: str
    created_at: float
    description: str = ""
    subscriptions: list[TopicSubscription] = []


class SubscriptionView(Struct, frozen=True, omit_defaults=True):
    """A subscription as the API shows it; ``secret`` only in the reply to ``tm.topics.subscribe``."""

    id: str
    topic: str
    protocol: Protocol
    endpoint: str
    state: SubscriptionState
    created_at: float
    disabled_at: float | None = None
    disabled_reason: str | None = None
    secret: str | None = None


class TopicView(Struct, frozen=True):
    name: str
    description: str
    created_at: float
    subscriptions: int
    active_subscriptions: int


class TopicList(Struct, frozen=True):
    topics: list[TopicView]


class SubscriptionList(Struct, frozen=True):
    topic: str
    subscriptions: list[SubscriptionView]


class DeliveryRecord(Struct, frozen=True):
    """Value of ``tm_deliveries[<topic>.<subscription id>.<webhook id>]``: the latest state of one delivery."""

    id: str  # the webhook-id (also the CloudEvent id of the body)
    topic: str
    subscription_id: str
    protocol: Protocol
    endpoint: str
    event_id: str  # the job event's id
    notification: str  # OnJobRunning, OnJobSucceeded, ...
    job_id: str
    state: DeliveryState
    attempts: int
    created_at: float  # when the event was fanned out
    updated_at: float
    last_status: int | None = None
    last_error: str | None = None
    next_attempt_at: float | None = None


class DeadLetter(DeliveryRecord, frozen=True, kw_only=True):
    """Value of ``tm_dead_letters`` (same key): a delivery that will not be tried again, with the
    CloudEvent that was not delivered (``tm.topics.deliveries`` with ``dead`` lists these)."""

    body: msgspec.Raw


class DeliveryList(Struct, frozen=True):
    topic: str
    dead: bool
    deliveries: list[DeliveryRecord]
    total: int


class DeliveryTask(Struct, frozen=True):
    """Body of ``tm.notify.deliver.<topic>.<subscription id>`` (internal): one event for one
    subscription.  ``body`` is the exact CloudEvent sent to a webhook, fixed at fan-out so every
    retry carries the same bytes under the same webhook-id."""

    id: str
    topic: str
    subscription_id: str
    event_id: str
    notification: str
    job_id: str
    created_at: float
    body: msgspec.Raw


# the events a job's ``subscription.events`` may name (the seed's three plus OnJobStopped)
SUBSCRIPTION_EVENT_NAMES: tuple[str, ...] = ("OnJobRunning", "OnJobSucceeded", "OnJobFailed", "OnJobStopped")
