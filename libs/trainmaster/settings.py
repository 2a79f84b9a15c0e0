"""Settings shared by every service, read from the environment (prefix ``TM_``).

Every setting has an embedded default so that ``make run`` needs nothing configured.
"""

from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TM_", extra="ignore")

    # --- bus ---------------------------------------------------------------------------
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server(s), comma separated")
    subject_prefix: str = Field("tm", pattern=r"^[A-Za-z0-9_-]+$")
    publish_timeout_s: float = Field(10.0, description="JetStream publish ack wait; covers fail-over")
    stream_replicas: int = Field(1, ge=1, le=5, description="R of streams and KV buckets (3 on a cluster)")

    # --- embedded nats-server (trainmaster up / make run) ------------------------------
    nats_host: str = "127.0.0.1"
    nats_port: int = 4222
    data_dir: Path = Field(Path(".trainmaster"), description="local state: nats store, outputs, logs")

    # --- intake -------------------------------------------------------------------------
    max_request_bytes: int = Field(256 * 1024, description="largest accepted job request body")
    create_wait_s: float = Field(
        10.0, description="how long tm.jobs.create waits for the validator's verdict before replying"
    )
    request_dedupe_ttl_s: float = Field(24 * 3600, description="how long a request id stays remembered")

    # --- scheduler ------------------------------------------------------------------------
    agent_timeout_s: float = Field(15.0, description="an agent silent this long is not placed on")

    # --- executor agent -------------------------------------------------------------------
    agent_id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    agent_pool: str = "cpu"
    agent_labels: str = ""
    agent_workdir: Path | None = None
    heartbeat_interval_s: float = 2.0
    stop_grace_s: float = Field(10.0, description="SIGTERM to SIGKILL grace when a job is stopped")

    # --- observability --------------------------------------------------------------------
    log_level: str = "INFO"
    otel_exporter: str = Field(
        "none", description="none | console | file (JSON lines in data_dir/traces) | otlp"
    )
    otel_file: Path | None = None

    @property
    def agent_workdir_path(self) -> Path:
        return self.agent_workdir or (self.data_dir / "agents" / self.agent_id)


@lru_cache
def get_settings() -> Settings:
    return Settings()
