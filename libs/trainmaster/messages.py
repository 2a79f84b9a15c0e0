"""Message types of the public contract and of the internal protocol (frozen msgspec Structs).

JSON Schema for the public ones is generated from these types (``trainmaster schema``).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from trainmaster import names
from trainmaster.catalog import Engine, Pool

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


class RetryPolicy(Struct, frozen=True, forbid_unknown_fields=True):
    """When a failed attempt is restarted (the whole job, as a new attempt, on any agents): a node
    exited with one of ``retry_exit_codes``, or an agent running one of its nodes was lost, and fewer
    than ``max_retries`` retries were used.  Other exit codes (1, 2, 126, 127, ...) fail the job.
    137 and 143 are a node killed by SIGKILL / SIGTERM (the agent reports signal N as 128+N)."""

    max_retries: Annotated[int, Meta(ge=0, le=10)] = 0
    retry_exit_codes: Annotated[list[Annotated[int, Meta(ge=1, le=255)]], Meta(max_length=32)] = msgspec.field(
        default_factory=lambda: [137, 143])
    retry_on_agent_lost: bool = True


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
    save_as: SaveAs | None = None  # R21: store this spec as a template when the job is created
    # ---- queueing, run time and retries (the scheduler) ----
    # higher first; jobs of equal priority share the cluster fairly between accounts
    priority: Annotated[int, Meta(ge=-100, le=100)] = 0
    # who the job is run (and billed) for: the unit of fair share
    account: Annotated[str, Meta(pattern=names.ACCOUNT_NAME)] = "default"
    # an attempt running longer than this is stopped and the job ends Failed (timeout)
    max_run_time_s: Annotated[float, Meta(gt=0, le=366 * 86400)] | None = None
    retry: RetryPolicy = RetryPolicy()
    # environment variables for every node (checked by the validator: trainmaster.jobenv)
    env: dict[str, str] = {}


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
    billing: Billing | None = None  # R23: billed duration and cost, once the job ended
    # why a Pending job is not placed yet, as the scheduler last said (``Waiting``); None otherwise
    pending_reason: str | None = None


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


class AgentLost(Change, tag="agent_lost"):
    """The agent running some of the attempt's nodes went silent (scheduler): retry or fail."""

    attempt: int
    agent_id: str


class TimedOut(Change, tag="timed_out"):
    """The attempt ran past ``max_run_time_s`` (scheduler): stop every node, then end Failed."""

    attempt: int
    limit_s: float


class Waiting(Change, tag="waiting"):
    """Why a Pending job is not placed yet (scheduler): sets ``pending_reason``.  Not a change of
    state: no history entry, no event (the scheduler writes it only when the reason changes)."""

    reason: str


class Billed(Change, tag="billed"):
    """The job ended after running and its account was charged (``change_id="billed"``)."""

    billing: Billing


AnyChange = (
    Validated | Rejected | Placed | PlacementImpossible | NodeRunning | NodeExited | StopRequested | AgentLost
    | TimedOut | Billed | Waiting
)


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
    # the agent of each node of the attempt (index = node): a distributed launch believes only
    # their rendezvous entries, and each agent may write only its own
    agents: list[str] = []


class Cancel(Struct, frozen=True, tag="cancel"):
    job_id: str
    reason: str
    # stop the nodes of this attempt and earlier ones only (None: every attempt): a Cancel for a
    # superseded attempt must not stop the next attempt placed on the same agent
    attempt: int | None = None


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
    lost: list[str] = []  # ids of agents silent past TM_AGENT_TIMEOUT_S (their jobs were retried or failed)


class PoolList(Struct, frozen=True):
    """Reply of ``tm.pools.list``: the resource pools of the catalog (``resources.yaml``), each with
    its flavors and their price per node-hour in ``currency``; ``accounts``: the only projects a
    dedicated pool admits (absent: every project)."""

    pools: list[Pool]
    currency: str


class EngineList(Struct, frozen=True):
    """Reply of ``tm.engines.list``: the AI engines of the "common framework" algorithm source
    (``engines.yaml``), each with its versions, aliases and whether it runs distributed."""

    engines: list[Engine]


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


# ================================================================ notifications
# Topics API (public, request/reply on ``tm.topics.<verb>``), the stored topic record, delivery
# records and the internal delivery task.  Kept in one section so other changes do not collide.
TopicName = Annotated[str, Meta(pattern=names.NAME)]
Protocol = Literal["webhook", "email"]
SubscriptionState = Literal["active", "disabled"]
DeliveryState = Literal["retrying", "delivered", "dead", "disabled", "skipped"]


class TopicCreate(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.topics.create``; ``project``: the project (a job's ``account``) the topic
    belongs to: its members manage it, its viewers read it, only its jobs may name it."""

    name: TopicName
    description: Annotated[str, Meta(max_length=1024)] = ""
    project: Annotated[str, Meta(pattern=names.ACCOUNT_NAME)] = "default"


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
    """A subscription as stored inside its topic's record, a webhook's signing secret encrypted
    (``enc:v1:<key id>:...``, trainmaster.secretbox; a plain one, written by an older version, is
    re-encrypted when a notifier starts)."""

    id: str
    protocol: Protocol
    endpoint: str
    created_at: float
    secret: str | None = None
    state: SubscriptionState = "active"
    disabled_at: float | None = None
    disabled_reason: str | None = None


class TopicRecord(Struct, frozen=True):
    """Value of ``tm_topics[<name>]``.  ``project``: the project it belongs to (a record written
    before topics had one reads as ``default``)."""

    name: str
    created_at: float
    description: str = ""
    subscriptions: list[TopicSubscription] = []
    project: str = "default"


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
    project: str = "default"


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


# ================================================================ the complete job
# Saved job parameters (templates), datasets, accounts and billing, the plan (dry run) and new
# versions; all request/reply on ``tm.{templates,datasets,accounts,algorithms}.<verb>`` and
# ``tm.jobs.{plan,new_version}``, answered by job-intake.  Kept in one section so other changes
# do not collide.
RegistryName = Annotated[str, Meta(pattern=names.NAME)]


class SaveAs(Struct, frozen=True, forbid_unknown_fields=True):
    """``save_as`` of a job request (R21): store the job's parameters as a template."""

    name: RegistryName
    description: Annotated[str, Meta(max_length=1024)] = ""


class Billing(Struct, frozen=True):
    """What a job cost: ``duration_s`` is the time it ran (Running until it ended) and ``cost`` =
    ``price_per_hour`` (flavor price x node count) x hours."""

    account: str
    price_per_hour: float
    duration_s: float
    cost: float
    currency: str
    billed_at: float


class NameRef(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.templates.get|delete``, ``tm.accounts.get``, ``tm.algorithms.get``, ``tm.datasets.get``."""

    name: str


# ---- templates (R9, R21)
class Template(Struct, frozen=True):
    """Value of ``tm_templates[<name>]``: a saved job specification."""

    name: str
    spec: JobRequest
    created_at: float
    updated_at: float
    description: str = ""
    source_job: str | None = None  # the job whose ``save_as`` stored it


class TemplateUpdate(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.templates.update``: a new description, a whole new ``spec``, and/or
    ``overrides`` (``{"parameters.max_iter": 300}``: dotted paths into the spec)."""

    name: str
    description: Annotated[str, Meta(max_length=1024)] | None = None
    spec: JobRequest | None = None
    overrides: dict[str, Any] = {}


class TemplateSave(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.templates.save``: store ``spec`` (a job's, as its page shows it) as template
    ``name``, replacing one of that name, as a job's ``save_as`` does but without a new job."""

    name: RegistryName
    spec: JobRequest
    description: Annotated[str, Meta(max_length=1024)] = ""


class TemplateList(Struct, frozen=True):
    templates: list[Template]


# ---- new versions and the plan (R8, R22)
class NewVersionRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.jobs.new_version``: the latest version's spec of job ``name`` with ``overrides``
    becomes a new job (the next version); ``dry_run`` answers with the plan instead."""

    name: str
    overrides: dict[str, Any] = {}
    dry_run: bool = False


class PlanReply(Struct, frozen=True):
    """Reply of ``tm.jobs.plan`` (and ``tm.jobs.new_version`` with ``dry_run``): what would be
    created, everything wrong with it, and what it costs per hour while it runs."""

    spec: JobRequest
    valid: bool
    violations: list[Violation]
    warnings: list[Violation]
    price_per_hour: float | None  # flavor price x node count; None when pool or flavor is unknown
    currency: str
    flavor: str | None
    next_version: str | None = None
    account_balance: float | None = None


class CheckRequest(Struct, frozen=True):
    """Body of ``tm.validator.check`` (internal): run every rule on a normalised spec."""

    spec: JobRequest


class CheckReply(Struct, frozen=True):
    violations: list[Violation]
    warnings: list[Violation]


# ---- accounts (R5, R23)
class LedgerEntry(Struct, frozen=True):
    """One change of an account's balance; ``id`` makes it idempotent (``charge:<job id>``,
    ``credit:<credit id>``)."""

    id: str
    kind: Literal["charge", "credit"]
    amount: float  # negative for a charge
    at: float
    job_id: str | None = None
    note: str = ""


CpuLimit = Annotated[float, Meta(ge=0, le=1e9)]
CountLimit = Annotated[int, Meta(ge=0, le=1_000_000_000)]


class AccountQuota(Struct, frozen=True, omit_defaults=True):
    """The most a project (account) may hold at once, counted over its Scheduled, Running and
    Stopping jobs: CPUs and GPUs (a flavor's, times the node count), nodes and jobs.  An absent
    limit is no limit.  The scheduler keeps a job Pending whose placement would go over one."""

    cpus: CpuLimit | None = None
    gpus: CountLimit | None = None
    nodes: CountLimit | None = None
    jobs: CountLimit | None = None


class AccountUse(Struct, frozen=True):
    """What an account's Scheduled, Running and Stopping jobs hold now (the quota counts these)."""

    cpus: float = 0.0
    gpus: int = 0
    nodes: int = 0
    jobs: int = 0


class Account(Struct, frozen=True):
    """Value of ``tm_accounts[<name>]``.  ``ledger`` keeps the latest entries (bounded)."""

    name: str
    balance: float
    currency: str
    created_at: float
    updated_at: float
    ledger: list[LedgerEntry] = []
    quota: AccountQuota | None = None


class AccountDetail(Account, frozen=True):
    """Reply of ``tm.accounts.get`` and ``tm.accounts.quota``: the account and what its jobs hold
    now (``in_use``, as job-intake's index of the job records knows it)."""

    in_use: AccountUse = AccountUse()


class AccountQuotaSet(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.accounts.quota``: a limit given as a number sets it, given as ``null`` removes
    it, left out keeps it; ``clear`` removes every limit first.  At least one limit or ``clear``."""

    name: Annotated[str, Meta(pattern=names.ACCOUNT_NAME)]
    cpus: CpuLimit | msgspec.UnsetType | None = msgspec.UNSET
    gpus: CountLimit | msgspec.UnsetType | None = msgspec.UNSET
    nodes: CountLimit | msgspec.UnsetType | None = msgspec.UNSET
    jobs: CountLimit | msgspec.UnsetType | None = msgspec.UNSET
    clear: bool = False


class AccountCredit(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.accounts.credit``: add ``amount`` (creates the account when it does not exist).
    ``credit_id`` makes a retried credit a no-op."""

    name: Annotated[str, Meta(pattern=names.ACCOUNT_NAME)]
    amount: Annotated[float, Meta(gt=0, le=1e12)]
    credit_id: Annotated[str, Meta(pattern=names.CREDIT_ID)] | None = None
    note: Annotated[str, Meta(max_length=256)] = ""


class AccountList(Struct, frozen=True):
    accounts: list[Account]


# ---- datasets (R1, R10)
class DatasetCreate(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.datasets.create``: a dataset over a storage location (local path or s3://),
    of ``project`` (an account: its viewers read it, its members publish it, its jobs train on it)."""

    name: RegistryName
    location: Annotated[str, Meta(min_length=1, max_length=2048)]
    description: Annotated[str, Meta(max_length=1024)] = ""
    project: Annotated[str, Meta(pattern=names.ACCOUNT_NAME)] = "default"


class DatasetPublish(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.datasets.publish``: snapshot the location's files as the next version."""

    name: str
    description: Annotated[str, Meta(max_length=1024)] = ""


class DatasetVersionRef(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.datasets.version``: one version's manifest."""

    name: str
    version: str


class ManifestFile(Struct, frozen=True, array_like=True):
    """``[path, size, checksum]``: path relative to the dataset's location; checksum = the MD5 of a
    local file or the S3 ETag (compact on purpose: a manifest must fit one KV value)."""

    path: str
    size: int
    checksum: str | None = None


class DatasetVersionInfo(Struct, frozen=True):
    version: str
    created_at: float
    files: int
    bytes: int
    description: str = ""


class Dataset(Struct, frozen=True):
    """Value of ``tm_datasets[<name>]``.  ``project``: the account it belongs to (a record written
    before datasets had one reads as ``default``)."""

    name: str
    location: str
    created_at: float
    updated_at: float
    description: str = ""
    versions: list[DatasetVersionInfo] = []
    project: str = "default"


class DatasetVersion(Struct, frozen=True):
    """Value of ``tm_dataset_versions[<name>.<version>]``: immutable (written with KV create only)."""

    dataset: str
    version: str
    location: str
    created_at: float
    files: list[ManifestFile]
    total_bytes: int
    description: str = ""


class DatasetList(Struct, frozen=True):
    datasets: list[Dataset]


# ---------------------------------------------------------------- the audit trail (public)
class AuditEntry(Struct, frozen=True):
    """One entry of the append-only audit stream, on ``tm.audit.<project>.<action>``.

    ``actor``: who asked, as the bus knows it: ``cluster-admin`` for a request from inside the
    services' account, else ``<account>/<user>`` from the server's ``Nats-Request-Info`` header.
    ``project``: the account the action concerns (``@cluster`` for cluster-wide things: templates,
    datasets, topics, agents).  ``outcome``: ``done`` or ``refused`` (``reason`` then says why)."""

    at: float
    actor: str
    action: str
    project: str
    target: str
    outcome: Literal["done", "refused"] = "done"
    reason: str | None = None
    detail: dict[str, Any] = {}


class AuditListRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.audit.list``: the newest ``limit`` entries (of ``project``, at or after
    ``since``, a Unix time), oldest first."""

    project: Annotated[str, Meta(pattern=names.AUDIT_PROJECT)] | None = None
    since: Annotated[float, Meta(ge=0)] | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class AuditList(Struct, frozen=True):
    entries: list[AuditEntry]
