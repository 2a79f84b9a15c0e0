"""Settings, read from the environment (prefix ``TM_``), in one group per concern.

Every setting has an embedded default so that ``make run`` needs nothing configured.  A service
reads its own group (the scheduler ``settings.scheduler``, the agent ``settings.agent``, the
notifier ``settings.notifier``, job-intake ``settings.intake``) and the shared ones (``bus``,
``api``, ``storage``, ``catalog``, ``billing``, ``observability``), api-gateway ``settings.http``;
``embedded`` is the stack that ``trainmaster up`` runs.  A variable keeps its flat name (``TM_AGENT_TIMEOUT_S`` is
``settings.scheduler.agent_timeout_s``), and ``Settings(agent_timeout_s=5)`` takes flat names
too, so overriding one setting needs no knowledge of the groups.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from trainmaster.names import ACCOUNT_NAME_RE
from trainmaster.storage_roots import EVERY_PROJECT, is_s3, roots_of, s3_root

# The Standard Webhooks retry schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h
# (each delay counts from the failure of the attempt before).
WEBHOOK_RETRY_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


class _Group(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TM_", extra="ignore")


def secret_from_file(value: SecretStr | None, path: Path | None, name: str) -> SecretStr | None:
    """A credential given as ``TM_<NAME>`` or read from ``TM_<NAME>_FILE`` (a file only its owner may
    read, e.g. a systemd credential: ``LoadCredentialEncrypted=`` keeps it encrypted at rest and
    hands the service a private plain copy).  Both set is a mistake, said so."""
    if path is None:
        return value
    env = f"TM_{name.upper()}"
    if value is not None:
        raise ValueError(f"{name}: set {env} or {env}_FILE, not both")
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{name}_file: cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ValueError(f"{name}_file: {path} may be read by others than its owner: chmod 600 {path}")
    return SecretStr(text.rstrip("\r\n"))


class BusSettings(_Group):
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server(s), comma separated")
    nats_creds: Path | None = Field(None, description="this process's credentials on the bus (a NATS creds "
                                    "file); unset = connect without (a server without authentication)")
    nats_ca_file: Path | None = Field(None, description="the CA that signs the NATS servers' TLS certificates, "
                                      "trusted alone; connections then start with the TLS handshake (servers "
                                      "with handshake_first, docs/security.md); unset = nats-py's default")
    subject_prefix: str = Field("tm", pattern=r"^[A-Za-z0-9_-]+$")
    publish_timeout_s: float = Field(10.0, description="JetStream publish ack wait; covers fail-over")
    stream_replicas: int = Field(1, ge=1, le=5, description="R of streams and KV buckets (3 on a cluster)")
    shutdown_grace_s: float = Field(
        2.5, gt=0, description="longest a service takes to stop on SIGTERM (stop hooks, in-flight messages, "
        "closing the connection) before it exits anyway; an agent's nodes get half of it")

    @field_validator("nats_creds", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value


class EmbeddedSettings(_Group):
    """The stack ``trainmaster up`` (``make run``) runs on one host, nats-server included."""

    nats_host: str = "127.0.0.1"
    nats_port: int = 4222
    data_dir: Path = Field(Path(".trainmaster"), description="local state: nats store, outputs, logs")
    # off by default: the server listens on loopback, where only local processes reach it and each
    # must show creds the stack issued (files only their owner reads); TLS adds little there
    embedded_tls: bool = Field(False, description="serve the bus over TLS (handshake first) with a CA and "
                               "server certificate the stack makes under <data_dir>/auth/tls/ (`up --tls`)")
    embedded_tls_cert: Path | None = Field(
        None, description="serve this certificate (PEM, naming TM_NATS_HOST) instead of the stack's own; with "
        "TM_EMBEDDED_TLS_KEY, turns TLS on; clients trust TM_NATS_CA_FILE (unset: the system's CAs)")
    embedded_tls_key: Path | None = Field(None, description="the key of TM_EMBEDDED_TLS_CERT")

    @field_validator("embedded_tls_cert", "embedded_tls_key", mode="before")
    @classmethod
    def _no_file_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _cert_with_key(self) -> EmbeddedSettings:
        if (self.embedded_tls_cert is None) != (self.embedded_tls_key is None):
            raise ValueError("embedded TLS: set both TM_EMBEDDED_TLS_CERT and TM_EMBEDDED_TLS_KEY, or neither")
        return self

    @property
    def tls(self) -> bool:
        """TLS on: asked for, or a certificate given."""
        return self.embedded_tls or self.embedded_tls_cert is not None


class ApiSettings(_Group):
    max_request_bytes: int = Field(256 * 1024, description="largest accepted request body")


class HttpSettings(_Group):
    """The HTTP API (api-gateway): JSON over HTTP, each route one request on the bus."""

    http_host: str = Field("127.0.0.1", description="where api-gateway listens (0.0.0.0: every interface; put "
                           "TLS in front of it beyond loopback: a bearer token travels in each request)")
    http_port: int = Field(8080, ge=0, le=65535, description="its port (0 under `trainmaster up`: a free one)")
    http_bus_timeout_s: float = Field(
        30.0, gt=0, description="how long api-gateway waits for a service's reply (a create waits for the "
        "validator, TM_CREATE_WAIT_S); then 504")


# the sample jobs' code and data (a checkout's examples/): a storage root only while TM_STORAGE_ROOTS is unset
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


class StorageSettings(_Group):
    """Where jobs may keep files on the hosts (storage roots), and S3-compatible object storage:
    AWS, OBS, MinIO, moto."""

    storage_roots: dict[str, list[str]] | None = Field(
        None, description="JSON {project: [folder or s3://bucket/prefix, ...]}: the only local folders a "
        "project's jobs may read and write (data, code, outputs, logs), and, once a project has an s3:// root, "
        "the only object-storage prefixes its jobs may use; \"*\" applies to every project, a project's own "
        "list adds to it. "
        "Unset = <TM_DATA_DIR>/storage, the system's temporary folder and a checkout's examples/ (for make run "
        "and the tests: production sets this)")

    region: str = Field("us-east-1", description="the service's region: buckets elsewhere are refused (R6)")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint; unset = AWS")
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_secret_access_key_file: Path | None = Field(
        None, description="read the S3 secret access key from this file (0600) instead of the variable")

    @field_validator("storage_roots", mode="before")
    @classmethod
    def _no_roots_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("storage_roots")
    @classmethod
    def _roots(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value is None:
            return None
        for project, roots in value.items():
            if project != EVERY_PROJECT and not ACCOUNT_NAME_RE.match(project):
                raise ValueError(f"storage_roots: {project!r} is neither \"*\" nor a project name")
            for root in roots:
                if is_s3(root):
                    try:
                        s3_root(root)
                    except ValueError as exc:
                        raise ValueError(f"storage_roots: {exc} (project {project})") from None
                elif not root.startswith("/") or "\x00" in root:
                    raise ValueError(f"storage_roots: {root!r} (project {project}) is neither an absolute path "
                                     "nor s3://bucket/prefix")
        return {project: [s3_root(root) if is_s3(root) else os.path.normpath(root) for root in roots]
                for project, roots in value.items()}

    @model_validator(mode="after")
    def _secret_file(self) -> StorageSettings:
        self.s3_secret_access_key = secret_from_file(self.s3_secret_access_key, self.s3_secret_access_key_file,
                                                     "s3_secret_access_key")
        self.s3_secret_access_key_file = None  # read: the settings are validated again when grouped
        return self


class CatalogSettings(_Group):
    catalog_dir: Path | None = Field(
        None, description="folder with resources.yaml / engines.yaml; unset = the catalogs shipped"
    )


class IntakeSettings(_Group):
    create_wait_s: float = Field(
        10.0, description="how long tm.jobs.create waits for the validator's verdict before replying"
    )
    request_dedupe_ttl_s: float = Field(24 * 3600, description="how long a request id stays remembered")
    follow_window_s: float = Field(
        300.0, gt=0, description="the longest job-intake serves one tm.jobs.events / tm.jobs.logs request; a "
        "follow then ends with Tm-End: more and the client asks again from where it got")
    follow_keepalive_s: float = Field(
        20.0, gt=0, description="the longest a quiet follow stays silent (a keepalive message): nats-server "
        "forgets a streamed reply's route to the people's account after 2 min without a message")
    users_signing_key_file: Path | None = Field(
        None, description="the users signer (0600): the people's scoped signing key and account, with which "
        "job-intake signs the NATS credentials of people (`trainmaster auth issue users-signer`); unset = "
        "people get API tokens only")

    @field_validator("users_signing_key_file", mode="before")
    @classmethod
    def _no_signer_when_empty(cls, value: object) -> object:
        return None if value == "" else value


class BillingSettings(_Group):
    default_account: str = Field("default", description="the account created at start-up for jobs that name none")
    default_account_balance: float = Field(100.0, description="starting balance of the default account")
    currency: str = Field("USD", description="currency of prices and balances")


class SchedulerSettings(_Group):
    agent_timeout_s: float = Field(
        15.0, gt=0, description="an agent silent this long is marked lost: not placed on, and its jobs are "
        "retried elsewhere or failed (their retry policy)")
    scheduler_lease_s: float = Field(
        10.0, gt=0, description="leader lease of the scheduler replicas: only the leader places; a follower "
        "takes over after the leader has not renewed the lease for this long")
    scheduler_strategy: Literal["binpack", "spread"] = Field(
        "binpack", description="binpack: the fitting agent with the least free first; spread: the most free")
    scheduler_reserve_after_s: float = Field(
        30.0, ge=0, description="a job blocked this long at the head of its pool gets agents held back for it "
        "(so a big gang is not starved by small jobs)")
    relay_settle_s: float = Field(
        1.0, ge=0, le=60,
        description="how long after a job record's write the scheduler's relay checks that its events were published",
    )
    scheduler_batch: int = Field(1024, ge=1, le=100_000, description="most placements decided in one pass")
    scheduler_commit_concurrency: int = Field(
        256, ge=1, le=10_000, description="placements written (compare-and-set, events, assignments) at once")


class AgentSettings(_Group):
    """The executor agent: who it is, what it offers, and how it stages, runs and logs nodes."""

    agent_id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    agent_pool: str = "cpu"
    agent_labels: str = ""
    agent_workdir: Path | None = Field(None, description="run folders and the data cache; unset = "
                                       "<data_dir>/agents/<agent_id>")
    heartbeat_interval_s: float = 2.0
    stop_grace_s: float = Field(10.0, description="SIGTERM to SIGKILL grace when a job is stopped")
    agent_cpus: int | None = Field(None, ge=1, description="CPUs this agent offers; unset = the host's")
    agent_memory_mb: int | None = Field(None, ge=1, description="memory this agent offers; unset = the host's")
    agent_addr: str | None = Field(
        None, description="address the other nodes of a distributed job reach this host at; unset = the "
        "local address of the route to the NATS server")
    stage_concurrency: int = Field(8, ge=1, le=256, description="parallel downloads when staging data")
    stage_local: str = Field("link", pattern="^(link|copy)$", description="local data: link in place, or "
                             "copy through the agent's cache (for slow shared file systems)")
    stage_cache_max_bytes: int = Field(50 * 1024**3, ge=0, description="size of the agent's data cache "
                                       "beyond which unused files are evicted, oldest first")
    runtime_pip_timeout_s: float = Field(1800.0, gt=0, description="longest a runtime's pip install may take")
    container_network: str = Field("none", description="podman network of single-node custom-image jobs "
                                   "(multi-node jobs use the host's network to reach each other)")
    container_read_only: bool = Field(False, description="custom-image jobs run with a read-only root file "
                                      "system (podman --read-only: tmpfs on /tmp, /var/tmp and /run; /output "
                                      "stays writable)")
    agent_job_user: str = Field("tm-job", description="the user framework jobs (and the commands of custom "
                                "images) run as when the agent runs as root; created at start when missing; "
                                "never root.  An agent that is not root runs jobs as itself")
    agent_job_users: str = Field(
        "per-project", pattern="^(per-project|shared)$", description="per-project: a job of project P runs as "
        "P's own user, tmj-<12 hex digits of sha256(P)> (created on first use, commented 'trainmaster jobs "
        "of project P'), so jobs of different projects cannot see each other's processes, environment or "
        "files; shared: every job runs as TM_AGENT_JOB_USER")
    rendezvous_timeout_s: float = Field(600.0, gt=0, description="how long a node of a distributed job "
                                        "waits for the others to be ready to start")
    job_log_limit_bytes: int = Field(100 * 1024**2, ge=1024, description="log bytes kept per job (shared "
                                     "equally by its nodes); past it, lines are dropped with a marker")
    agent_cgroups: str = Field(
        "auto", pattern="^(auto|required|off)$", description="a cgroup per node with its flavor's CPUs and "
        "memory and a process limit, killed whole on stop: auto = when the host allows (else a warning), "
        "required = refuse to start without, off = never")
    agent_node_pids_max: int = Field(4096, ge=16, description="processes and threads one node may have "
                                     "(its cgroup's pids.max; podman's --pids-limit)")
    agent_node_disk_max_bytes: int = Field(50 * 1024**3, ge=1024, description="bytes a node may write into "
                                           "its run folder (outputs, scratch; not its staged inputs); past it "
                                           "the node is stopped")
    agent_node_disk_check_s: float = Field(5.0, gt=0, description="how often the run folder's size is summed")
    agent_project_secrets_dir: Path | None = Field(
        None, description="a folder (the agent's user's, 0700) of <project>.json files (0600) holding a project's "
        "S3 credentials, {\"s3\": {\"access_key_id\", \"secret_access_key\", \"session_token\"?, "
        "\"endpoint_url\"?, \"region\"?}}: a node of that project gets them as AWS_ACCESS_KEY_ID, ... "
        "(make them with a policy limited to the project's prefixes); a file others may read gives nothing. "
        "Unset = jobs get no storage credentials")

    @field_validator("agent_project_secrets_dir", mode="before")
    @classmethod
    def _no_secrets_dir_when_empty(cls, value: object) -> object:
        return None if value == "" else value


class ObservabilitySettings(_Group):
    log_level: str = "INFO"
    otel_exporter: str = Field(
        "none", description="none | console | file (JSON lines in data_dir/traces) | otlp"
    )
    otel_file: Path | None = None


class NotifierSettings(_Group):
    """Webhooks and email."""

    webhook_allow_private: bool = Field(
        False, description="allow webhook URLs that resolve to loopback, private, link-local or metadata "
        "addresses (only for tests and closed networks)")
    webhook_timeout_s: float = Field(10.0, gt=0, le=60, description="total time one webhook attempt may take")
    webhook_retry_schedule_s: Annotated[tuple[float, ...], NoDecode] = Field(
        WEBHOOK_RETRY_SCHEDULE_S, description="delay before each attempt, the first included (comma separated "
        "or a JSON list); the last attempt failing dead-letters the delivery")
    notify_max_in_flight: int = Field(256, ge=1, le=10_000, description="deliveries one notifier sends at once")
    notify_max_in_flight_per_subscription: int = Field(
        32, ge=1, le=10_000, description="deliveries to one subscription at once: a slow endpoint takes no more")
    notify_ack_wait_s: float = Field(
        60.0, gt=0, description="ack wait of the delivery consumer: a notifier that dies mid-delivery has its "
        "deliveries sent again after this long (at least twice the webhook and SMTP timeouts)")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_starttls: bool = Field(False, description="upgrade the SMTP connection with STARTTLS (required then)")
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_password_file: Path | None = Field(
        None, description="read the SMTP password from this file (0600) instead of the variable")
    smtp_from: str = "trainmaster@localhost"
    smtp_timeout_s: float = Field(20.0, gt=0, le=120, description="total time one email attempt may take")
    smtp_ca_file: Path | None = Field(None, description="CA bundle that signs the SMTP server's certificate "
                                      "(default: the system's)")
    secrets_key_file: Path | None = Field(
        None, description="the keys that encrypt webhook signing secrets at rest ('<key id>:<base64 key>' "
        "lines, the first encrypts; `trainmaster secrets new-key --out FILE`); required: the notifier does not "
        "start without it (`trainmaster up` makes <data_dir>/auth/secrets.key)")
    secrets_key_file_allow_shared: bool = Field(
        False, description="accept a key file that group or others may read (a mounted secret whose mode "
        "cannot be 0600); otherwise such a file is refused")

    @field_validator("webhook_retry_schedule_s", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(float(part) for part in text.split(",") if part.strip())
        return value

    @field_validator("secrets_key_file", mode="before")
    @classmethod
    def _no_key_file_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _notify_limits(self) -> NotifierSettings:
        self.smtp_password = secret_from_file(self.smtp_password, self.smtp_password_file, "smtp_password")
        self.smtp_password_file = None  # read: the settings are validated again when grouped
        schedule = self.webhook_retry_schedule_s
        if not 1 <= len(schedule) <= 50 or any(d < 0 for d in schedule):
            raise ValueError("webhook_retry_schedule_s: give 1 to 50 delays, each >= 0")
        if sum(schedule) > 6 * 86400:
            # a delivery's record (its attempt count) lives 7 days after its last write
            raise ValueError("webhook_retry_schedule_s: the delays may add up to 6 days at most")
        if self.notify_ack_wait_s < 2 * max(self.webhook_timeout_s, self.smtp_timeout_s):
            raise ValueError("notify_ack_wait_s must be at least twice webhook_timeout_s and smtp_timeout_s")
        return self


GROUPS: dict[str, type[_Group]] = {
    "bus": BusSettings, "embedded": EmbeddedSettings, "api": ApiSettings, "storage": StorageSettings,
    "catalog": CatalogSettings, "intake": IntakeSettings, "billing": BillingSettings,
    "scheduler": SchedulerSettings, "agent": AgentSettings, "observability": ObservabilitySettings,
    "notifier": NotifierSettings, "http": HttpSettings,
}
GROUP_OF: dict[str, str] = {field: group for group, cls in GROUPS.items() for field in cls.model_fields}


class Settings(BaseModel):
    """Every group, each read from the environment; keyword arguments (flat names, or whole
    groups) take precedence over it."""

    model_config = ConfigDict(frozen=True)

    bus: BusSettings
    embedded: EmbeddedSettings
    api: ApiSettings
    storage: StorageSettings
    catalog: CatalogSettings
    intake: IntakeSettings
    billing: BillingSettings
    scheduler: SchedulerSettings
    agent: AgentSettings
    observability: ObservabilitySettings
    notifier: NotifierSettings
    http: HttpSettings

    def __init__(self, **given: Any) -> None:
        per_group: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
        groups: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in given.items():
            if key in GROUPS:
                groups[key] = value
            elif key in GROUP_OF:
                per_group[GROUP_OF[key]][key] = value
            else:
                unknown.append(key)
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(sorted(unknown))}: see trainmaster.settings for the names")
        for name, cls in GROUPS.items():
            if name not in groups:
                groups[name] = cls(**per_group[name])
            elif per_group[name]:  # a group and some of its settings by name: the names win
                groups[name] = cls(**{**dict(groups[name]), **per_group[name]})
        super().__init__(**groups)

    def storage_roots_for(self, project: str) -> tuple[str, ...]:
        """The storage roots of ``project`` as configured (absolute, not yet resolved)."""
        config = self.storage.storage_roots
        if config is None:
            defaults = [os.path.abspath(self.embedded.data_dir / "storage"), tempfile.gettempdir()]
            if EXAMPLES_DIR.is_dir():
                defaults.append(str(EXAMPLES_DIR))
            config = {EVERY_PROJECT: defaults}
        return roots_of(config, project)

    @property
    def agent_workdir_path(self) -> Path:
        return self.agent.agent_workdir or (self.embedded.data_dir / "agents" / self.agent.agent_id)


@lru_cache
def get_settings() -> Settings:
    return Settings()
