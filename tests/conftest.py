"""Fixtures shared by the integration and end-to-end tiers.

- ``nats_server`` / ``module_nats_server``: a real ``nats-server`` with JetStream on a free port and
  its own store directory (per test / per module), stopped afterwards; they yield the URL.
- ``nc``: a plain nats-py connection to ``nats_server`` with the topology provisioned.
- ``services`` / ``module_services``: start services as real subprocesses (``support.Services``);
  every one is stopped at teardown (SIGTERM, then SIGKILL), none is left behind.
- ``secured_nats``: a nats-server in operator mode trusting a fresh ``Authority`` (no anonymous
  connections); ``support.SecuredNats`` issues creds files for it.
- ``s3_server``: a real S3-compatible server (moto's server mode) per module; ``.settings()``
  gives Settings that reach it, ``.env()`` the environment a service process needs.
- a failed test shows the tail of the log of every service that ran during it.
- run as root, the session's temporary folders and the Python are made reachable by the job user
  the agents run jobs as (``jobaccess``).

Subjects, streams and consumers come from ``trainmaster.topology`` only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jobaccess
import nats
import pytest
from nats.aio.client import Client as NATS
from s3server import S3Server
from support import LIVE, SecuredNats, Services, run_sync

from trainmaster.auth.authority import Authority
from trainmaster.bus import provision
from trainmaster.natsd import NatsServer
from trainmaster.topology import Topology

TOPO = Topology()
# every embedded stack a test starts serves its HTTP API on a free port (not 8080): tests run beside
# each other, and beside a developer's `make run`
os.environ.setdefault("TM_HTTP_PORT", "0")


def start_nats(store_dir: Path) -> NatsServer:
    server = NatsServer(store_dir=store_dir, port=-1, log_file=store_dir / "nats-server.log")
    server.start()
    return server


async def provision_topology(url: str, topo: Topology = TOPO) -> None:
    """Create every stream, KV bucket and fixed consumer of the topology (idempotent)."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        await provision(nc.jetstream(), topo)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (moto in server mode) on a free loopback port, per module."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def topo() -> Topology:
    return TOPO


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[str]:
    server = start_nats(tmp_path / "nats")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = start_nats(tmp_path_factory.mktemp("nats"))
    try:
        run_sync(lambda: provision_topology(server.url))
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[SecuredNats]:
    authority = Authority.load_or_create(tmp_path / "authority")
    home = tmp_path / "nats-secured"
    config = home / "server.conf"
    home.mkdir(parents=True, exist_ok=True)
    config.write_text(authority.server_config(home / "trust", TOPO))
    log_file = home / "nats-server.log"
    server = NatsServer(store_dir=home / "store", port=-1, config_file=config, log_file=log_file)
    server.start()
    try:
        yield SecuredNats(server.url, authority, tmp_path / "creds", log_file)
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: str) -> AsyncIterator[NATS]:
    """A plain client connection to a provisioned ``nats_server``."""
    client = await nats.connect(nats_server, connect_timeout=5)
    await provision(client.jetstream(), TOPO)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    started = Services(tmp_path / "data")
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
def module_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    started = Services(tmp_path_factory.mktemp("data"))
    try:
        yield started
    finally:
        started.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A red test explains itself: add the tail of each running service's log to the report."""
    report = yield
    if report.failed:
        for svc in list(LIVE):
            state = "running" if svc.alive() else f"exited with {svc.proc.returncode if svc.proc else None}"
            report.sections.append((f"{svc.name} ({state}), last log lines of {svc.log_path}", svc.tail(60)))
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if jobaccess.needed():
        jobaccess.let_others_reach_python()
        jobaccess.use_reachable_basetemp(config)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    if jobaccess.needed():
        jobaccess.make_created_folders_crossable(session.config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if jobaccess.needed():
        jobaccess.forget_passed_session(session, exitstatus)
