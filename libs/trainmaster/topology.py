"""The one declaration of subjects, streams, consumers and KV buckets.

Services, the provisioning step, the CLI and the tests all read this module; nothing else
spells a subject.  Every subject starts with the configurable prefix (default ``tm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: RetentionPolicy = RetentionPolicy.LIMITS
    max_age_s: float = 0  # 0 = unlimited
    max_bytes: int = -1
    max_msg_size: int = -1
    duplicate_window_s: float = 120.0
    discard: DiscardPolicy = DiscardPolicy.OLD
    storage: StorageType = StorageType.FILE
    allow_direct: bool = False  # direct gets (any replica answers; batched last-message reads)
    # the server refuses to delete a message of the stream, or to purge it (append-only)
    deny_delete: bool = False
    deny_purge: bool = False


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer and its delivery contract.

    ``poison``: what happens to a message whose handler keeps failing or that cannot be decoded:
    it is copied to ``<prefix>.dlq.<durable>`` with the error in a header, then terminated.
    """

    durable: str
    stream: str
    filter_subject: str
    ack_wait_s: float
    max_deliver: int
    # delays between redeliveries after a handler error (the last value repeats)
    retry_delays_s: tuple[float, ...] = (1.0, 5.0, 15.0)
    max_ack_pending: int = 1000
    batch_size: int = 16
    poison: str = "dead-letter to <prefix>.dlq.<durable>, then terminate"


@dataclass(frozen=True)
class BucketSpec:
    name: str
    history: int = 1
    ttl_s: float | None = None
    description: str = ""


@dataclass(frozen=True)
class Topology:
    prefix: str = "tm"
    replicas: int = 1

    # ---- public request/reply subjects (core NATS, queue group "job-intake") -----------
    def jobs(self, verb: str) -> str:
        """``tm.jobs.create``, ``tm.jobs.get``, ``tm.jobs.list``, ``tm.jobs.stop``."""
        return f"{self.prefix}.jobs.{verb}"

    @property
    def job_verbs(self) -> tuple[str, ...]:
        return ("create", "get", "list", "stop")

    @property
    def jobs_submit(self) -> str:
        """JetStream, fire-and-forget job requests; ``Nats-Msg-Id`` = request id."""
        return f"{self.prefix}.jobs.submit"

    @property
    def agents_list(self) -> str:
        """Request/reply, answered by the scheduler: the registered agents."""
        return f"{self.prefix}.agents.list"

    @property
    def pools_list(self) -> str:
        """Request/reply, answered by job-intake: the resource pools, their flavors and prices."""
        return f"{self.prefix}.pools.list"

    @property
    def engines_list(self) -> str:
        """Request/reply, answered by job-intake: the engines of the "common framework" source."""
        return f"{self.prefix}.engines.list"

    # ---- events and logs -----------------------------------------------------------------
    def job_events(self, job_id: str = "*") -> str:
        return f"{self.prefix}.events.job.{job_id}"

    def request_events(self, request_id: str = "*") -> str:
        """Outcome of a ``tm.jobs.submit`` message: accepted (with the job id) or rejected."""
        return f"{self.prefix}.events.request.{request_id}"

    def logs(self, job_id: str = "*", node: str = "*") -> str:
        return f"{self.prefix}.logs.{job_id}.{node}"

    # ---- internal pipeline ---------------------------------------------------------------
    @property
    def work_validate(self) -> str:
        return f"{self.prefix}.work.validate"

    @property
    def work_schedule(self) -> str:
        return f"{self.prefix}.work.schedule"

    def agent_heartbeat(self, agent_id: str = "*") -> str:
        """Core NATS (not stored): agent fingerprint, capacity and running work."""
        return f"{self.prefix}.agent.heartbeat.{agent_id}"

    def agent_control(self, agent_id: str = "*") -> str:
        """Assignments and cancellations for one agent."""
        return f"{self.prefix}.agent.control.{agent_id}"

    def agent_status(self, agent_id: str = "*") -> str:
        """Reports from an agent: node running, node exited."""
        return f"{self.prefix}.agent.status.{agent_id}"

    def dlq(self, durable: str = "*") -> str:
        return f"{self.prefix}.dlq.{durable}"

    # ---- streams -------------------------------------------------------------------------
    def _name(self, suffix: str) -> str:
        return f"{self.prefix.upper().replace('-', '_')}_{suffix}"

    @cached_property
    def stream_requests(self) -> StreamSpec:
        return StreamSpec(
            self._name("REQUESTS"),
            (self.jobs_submit,),
            retention=RetentionPolicy.WORK_QUEUE,
            max_msg_size=1024 * 1024,
        )

    @cached_property
    def stream_events(self) -> StreamSpec:
        # direct gets: the record relay reads the last event of hundreds of jobs in one request
        return StreamSpec(self._name("EVENTS"), (f"{self.prefix}.events.>",), max_age_s=7 * 86400, allow_direct=True)

    @cached_property
    def stream_work(self) -> StreamSpec:
        return StreamSpec(
            self._name("WORK"), (f"{self.prefix}.work.>",), retention=RetentionPolicy.WORK_QUEUE
        )

    @cached_property
    def stream_agent(self) -> StreamSpec:
        return StreamSpec(
            self._name("AGENT"),
            (f"{self.prefix}.agent.control.>", f"{self.prefix}.agent.status.>"),
            retention=RetentionPolicy.WORK_QUEUE,
        )

    @cached_property
    def stream_logs(self) -> StreamSpec:
        return StreamSpec(
            self._name("LOGS"),
            (f"{self.prefix}.logs.>",),
            max_age_s=3 * 86400,
            max_bytes=1024**3,
            duplicate_window_s=10.0,
        )

    @cached_property
    def stream_dlq(self) -> StreamSpec:
        return StreamSpec(self._name("DLQ"), (f"{self.prefix}.dlq.>",), max_age_s=30 * 86400)

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        return (
            self.stream_requests,
            self.stream_events,
            self.stream_work,
            self.stream_agent,
            self.stream_logs,
            self.stream_dlq,
            self.stream_deliveries,
            self.stream_audit,
        )

    # ---- consumers -----------------------------------------------------------------------
    @cached_property
    def consumer_intake_submit(self) -> ConsumerSpec:
        # accepted a batch at a time (services/job_intake/submissions.py): a batch of 512 shares its
        # per-batch costs (a counter raise per name) among more jobs, and two batches in flight
        # hold up to 1,024 unacked requests, more than the default 1,000 allows
        return ConsumerSpec(
            "job-intake-submit", self.stream_requests.name, self.jobs_submit, 30, 5, batch_size=512,
            max_ack_pending=4096,
        )

    @cached_property
    def consumer_validator(self) -> ConsumerSpec:
        return ConsumerSpec("validator", self.stream_work.name, self.work_validate, 60, 5)

    @cached_property
    def consumer_scheduler_queue(self) -> ConsumerSpec:
        return ConsumerSpec("scheduler-queue", self.stream_work.name, self.work_schedule, 30, 5)

    @cached_property
    def consumer_scheduler_status(self) -> ConsumerSpec:
        return ConsumerSpec("scheduler-status", self.stream_agent.name, self.agent_status(">"), 30, 10)

    def consumer_agent(self, agent_id: str) -> ConsumerSpec:
        # one durable per agent: a restarted agent resumes its own unacknowledged work
        return ConsumerSpec(
            f"agent-{agent_id}", self.stream_agent.name, self.agent_control(agent_id), 60, 5, batch_size=4
        )

    @cached_property
    def consumer_notifier(self) -> ConsumerSpec:
        return ConsumerSpec("notifier", self.stream_events.name, self.job_events("*"), 30, 10)

    @cached_property
    def consumer_record_relay(self) -> ConsumerSpec:
        """The scheduler's record relay (services/scheduler/relay.py): every revision of every job
        record, from the job bucket's own stream, acknowledged once the record's events (and a new
        job's validation) are known to be published.  Publishing is retried for ever on purpose:
        an event given up on is exactly the loss the relay exists to prevent."""
        return ConsumerSpec(
            "record-relay", f"KV_{self.bucket_jobs.name}", f"$KV.{self.bucket_jobs.name}.>",
            ack_wait_s=60, max_deliver=-1, batch_size=256,
            poison="an undecodable record: dead-letter to <prefix>.dlq.record-relay, then terminate",
        )

    @property
    def consumers(self) -> tuple[ConsumerSpec, ...]:
        """The fixed consumers (agents declare their own at start-up)."""
        return (
            self.consumer_intake_submit,
            self.consumer_validator,
            self.consumer_scheduler_queue,
            self.consumer_scheduler_status,
            self.consumer_notifier,
            self.consumer_billing,
            self.consumer_record_relay,
        )

    # ---- KV buckets ----------------------------------------------------------------------
    @cached_property
    def bucket_jobs(self) -> BucketSpec:
        return BucketSpec(f"{self.prefix}_jobs", history=5, description="job records (current state)")

    @cached_property
    def bucket_job_names(self) -> BucketSpec:
        return BucketSpec(f"{self.prefix}_job_names", description="latest version number per job name")

    @cached_property
    def bucket_requests(self) -> BucketSpec:
        return BucketSpec(
            f"{self.prefix}_requests", ttl_s=24 * 3600, description="request id -> job id (idempotence)"
        )

    @property
    def buckets(self) -> tuple[BucketSpec, ...]:
        return (self.bucket_jobs, self.bucket_job_names, self.bucket_requests, *self.notify_buckets,
                self.bucket_rendezvous, *self.registry_buckets, self.bucket_scheduler, self.bucket_users)


    # ---- notifications: topics API, deliveries (the notifier owns all of these) ------------
    def topics(self, verb: str) -> str:
        """Request/reply, answered by the notifier in queue group ``notifier``: ``tm.topics.<verb>``."""
        return f"{self.prefix}.topics.{verb}"

    @property
    def topic_verbs(self) -> tuple[str, ...]:
        return ("create", "list", "get", "delete", "subscribe", "unsubscribe", "subscriptions", "deliveries")

    def notify_deliver(self, topic: str = "*", subscription_id: str = "*") -> str:
        """One message per (event, subscription) to be sent; ``Nats-Msg-Id`` = ``<event id>:<subscription id>``."""
        return f"{self.prefix}.notify.deliver.{topic}.{subscription_id}"

    @cached_property
    def stream_deliveries(self) -> StreamSpec:
        # Work queue: a delivery leaves the stream when it is acked (sent, dead-lettered or skipped),
        # so no max age: a delivery that keeps failing stays for the whole retry schedule (the
        # Standard Webhooks one spans about 3 days).  The dedupe window covers a notifier that was
        # down for minutes between fanning an event out and acking it.
        return StreamSpec(
            self._name("DELIVERIES"),
            (f"{self.prefix}.notify.deliver.>",),
            retention=RetentionPolicy.WORK_QUEUE,
            max_msg_size=1024 * 1024,
            duplicate_window_s=600.0,
        )

    @cached_property
    def consumer_notify_deliver(self) -> ConsumerSpec:
        """The notifier's sender.  Not in ``consumers``: the notifier declares it at start-up with
        ``ack_wait`` = ``TM_NOTIFY_ACK_WAIT_S`` (60 s here; at least twice the HTTP/SMTP timeouts).
        ``max_deliver`` is unlimited on purpose: attempts are counted in the delivery record, not by
        redeliveries (a notifier restart or a busy subscription's deferral is not an attempt); the
        handler dead-letters after the retry schedule's last attempt, and also any message
        delivered 1000 times (the poison backstop).  Retry delays are per-message nak delays from
        the schedule; they keep the message pending, hence the large ``max_ack_pending``."""
        return ConsumerSpec(
            "notifier-deliver", self.stream_deliveries.name, f"{self.prefix}.notify.deliver.>",
            ack_wait_s=60.0, max_deliver=-1, retry_delays_s=(), max_ack_pending=100_000, batch_size=256,
            poison="dead-letter record in tm_dead_letters, then ack; an undecodable task: dead-letter to "
                   "<prefix>.dlq.notifier-deliver, then terminate",
        )

    @cached_property
    def bucket_topics(self) -> BucketSpec:
        # one key per topic holding its subscriptions: every change is one compare-and-set
        return BucketSpec(f"{self.prefix}_topics", history=5, description="notification topics and subscriptions")

    @cached_property
    def bucket_deliveries(self) -> BucketSpec:
        # key <topic>.<subscription id>.<webhook id>: latest state and attempt count of each delivery;
        # the TTL outlives any allowed retry schedule (at most 6 days)
        return BucketSpec(f"{self.prefix}_deliveries", ttl_s=7 * 86400, description="delivery records")

    @cached_property
    def bucket_dead_letters(self) -> BucketSpec:
        return BucketSpec(f"{self.prefix}_dead_letters", ttl_s=30 * 86400,
                          description="deliveries that used up their retry schedule, with their body")

    @property
    def notify_buckets(self) -> tuple[BucketSpec, ...]:
        return (self.bucket_topics, self.bucket_deliveries, self.bucket_dead_letters)


    # ---- distributed launch (the executor agents own this) --------------------------------
    @cached_property
    def bucket_rendezvous(self) -> BucketSpec:
        # key <job_id>.<attempt>.<node>: where that node's agent can be reached ({"addr", "port", ...});
        # every node of a distributed job waits until all keys of its attempt are there, then starts
        # with MASTER_ADDR/PORT = node 0's entry.  The TTL only tidies up: an attempt is never reused.
        return BucketSpec(f"{self.prefix}_rendezvous", ttl_s=24 * 3600,
                          description="distributed launch: the address and port of each node of an attempt")


    # ---- registries (templates, datasets, accounts, algorithms), plan, billing ------
    # Request/reply, answered by job-intake in queue group ``job-intake``.
    def templates(self, verb: str) -> str:
        """``tm.templates.<verb>``: list, get, save, update, delete (``save_as`` of a job also saves one)."""
        return f"{self.prefix}.templates.{verb}"

    def datasets(self, verb: str) -> str:
        """``tm.datasets.<verb>``: create, list, get, publish (a new immutable version), version."""
        return f"{self.prefix}.datasets.{verb}"

    def accounts(self, verb: str) -> str:
        """``tm.accounts.<verb>``: list, get, credit, quota."""
        return f"{self.prefix}.accounts.{verb}"

    def algorithms(self, verb: str) -> str:
        """``tm.algorithms.<verb>``: list, get (the preset algorithms catalog)."""
        return f"{self.prefix}.algorithms.{verb}"

    @property
    def registry_subjects(self) -> dict[str, tuple[str, ...]]:
        return {
            "templates": ("list", "get", "save", "update", "delete"),
            "datasets": ("create", "list", "get", "publish", "version"),
            "accounts": ("list", "get", "credit", "quota"),
            "algorithms": ("list", "get"),
        }

    @property
    def validator_check(self) -> str:
        """Internal request/reply, answered by the validator (queue ``validator``): every rule on a
        spec without creating a job; job-intake asks it for ``tm.jobs.plan``."""
        return f"{self.prefix}.validator.check"

    @cached_property
    def consumer_billing(self) -> ConsumerSpec:
        """job-intake's biller: reads every job event, charges a job's account once the job ended
        after running.  Idempotent (the charge id is the job id, kept in the account's ledger, and
        the job's ``billed`` change is recorded once), so redelivery never charges twice."""
        return ConsumerSpec("billing", self.stream_events.name, self.job_events("*"), 30, 10, batch_size=64)

    @cached_property
    def bucket_templates(self) -> BucketSpec:
        return BucketSpec(f"{self.prefix}_templates", history=5, description="saved job parameters (templates)")

    @cached_property
    def bucket_datasets(self) -> BucketSpec:
        return BucketSpec(f"{self.prefix}_datasets", history=5, description="datasets and their version list")

    @cached_property
    def bucket_dataset_versions(self) -> BucketSpec:
        # key <dataset>.<version>; written with create only: a published version never changes
        return BucketSpec(f"{self.prefix}_dataset_versions", description="immutable dataset version manifests")

    @cached_property
    def bucket_accounts(self) -> BucketSpec:
        return BucketSpec(f"{self.prefix}_accounts", history=5, description="accounts: balance and ledger")

    @property
    def registry_buckets(self) -> tuple[BucketSpec, ...]:
        return (self.bucket_templates, self.bucket_datasets, self.bucket_dataset_versions, self.bucket_accounts)

    # ---- scheduler: leader lease of its replicas (the scheduler owns this) -----------------
    @cached_property
    def bucket_scheduler(self) -> BucketSpec:
        # key "leader": {"holder", "term"}, renewed by compare-and-set; see services/scheduler/lease.py
        return BucketSpec(f"{self.prefix}_scheduler", description="scheduler replicas: the leader lease")


    # ---- the audit trail: who did what (job-intake answers the list verb) ----------------
    def audit(self, project: str = "*", action: str = "*") -> str:
        """``tm.audit.<project>.<action>``: one entry per audited action.  A project is one
        subject token (its dots written ``~``: account ``team.ml`` is ``team~ml``), and so is an
        action (``job_create``), so ``tm.audit.<project>.*`` is exactly one project's entries."""
        token = project if project == "*" else project.replace(".", "~")
        return f"{self.prefix}.audit.{token}.{action}"

    @property
    def audit_list(self) -> str:
        """Request/reply, answered by job-intake (queue ``job-intake``): the newest entries.  One
        token after ``audit``, so the stream (two tokens) never stores a request."""
        return f"{self.prefix}.audit.list"

    @cached_property
    def stream_audit(self) -> StreamSpec:
        # append-only: the server refuses deletes and purges; only age removes an entry (a little
        # over a year, enough for a yearly review).  The dedupe window covers a handler
        # redelivered after its ack wait: an entry's message id is derived from what it records.
        return StreamSpec(
            self._name("AUDIT"), (self.audit("*", "*"),), max_age_s=400 * 86400,
            duplicate_window_s=600.0, deny_delete=True, deny_purge=True,
        )


    # ---- people: users, their roles and credentials (job-intake answers) -------------------
    def users(self, verb: str) -> str:
        """``tm.users.<verb>``: create, list, get, grant, issue, revoke, whoami; ``authenticate``
        (an API token -> its user) is for the services only."""
        return f"{self.prefix}.users.{verb}"

    @property
    def user_verbs(self) -> tuple[str, ...]:
        return ("create", "list", "get", "grant", "issue", "revoke", "whoami")

    @cached_property
    def bucket_users(self) -> BucketSpec:
        # key <user name>: its roles by project and its credentials (public keys, token hashes)
        return BucketSpec(f"{self.prefix}_users", history=5, description="users, roles and credentials")

    # ---- what the people's account may ask (exported by the services' account) -----------
    @property
    def streamed_job_verbs(self) -> tuple[str, ...]:
        """Verbs answered with several messages, the last one empty (a job's events, its logs)."""
        return ("events", "logs")

    def user_exports(self) -> tuple[tuple[str, bool], ...]:
        """(subject, streamed replies) of every verb a user may send: the services answer each after
        checking the caller's role.  ``tm.jobs.submit`` is not among them (a stored message loses who
        sent it), nor anything internal: agents' subjects, JetStream, KV."""
        one = [self.jobs(v) for v in (*self.job_verbs, "plan", "new_version")]
        one += [f"{self.prefix}.{group}.*" for group in ("templates", "datasets", "accounts", "algorithms", "topics")]
        one += [self.agents_list, self.pools_list, self.engines_list, self.audit_list,
                *(self.users(v) for v in self.user_verbs)]
        return (*((s, False) for s in one), *((self.jobs(v), True) for v in self.streamed_job_verbs))


def topology_from_settings() -> Topology:
    from trainmaster.settings import get_settings

    s = get_settings()
    return Topology(prefix=s.bus.subject_prefix, replicas=s.bus.stream_replicas)
