"""``trainmaster up``: the embedded nats-server, the services (the HTTP API's gateway included) and
local agents as separate processes, restarted if they crash, all stopped cleanly (no orphans) on
Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client as NATS

from trainmaster import kvstore, user_rules
from trainmaster.access import Credential, UserRecord
from trainmaster.auth.authority import Authority, write_private
from trainmaster.auth.credentials import connect_options
from trainmaster.auth.local import LocalAuth
from trainmaster.auth.localtls import LocalTls, ServerTls
from trainmaster.auth.revocations import RevocationPusher
from trainmaster.bus import provision
from trainmaster.hostaccess import open_the_way, python_paths
from trainmaster.identity import Directory, credential_id, new_token, token_hash
from trainmaster.messages import encode
from trainmaster.nats_health import needs_restart
from trainmaster.natsd import NatsServer
from trainmaster.procs import child_preexec
from trainmaster.settings import Settings
from trainmaster.topology import Topology

SERVICES = ("job_intake", "validator", "scheduler", "notifier", "api_gateway")
CRASH_LIMIT = 5  # restarts of one child within CRASH_WINDOW_S; one more crash and it is given up
CRASH_WINDOW_S = 60.0
WATCH_INTERVAL_S = 0.5
# shutdown, 5 s at most in all: every service and agent gets SIGTERM at once and this long to exit
# (each bounds its own stop to TM_SHUTDOWN_GRACE_S, 2.5 s); then nats-server, last, gets its own
CHILD_GRACE_S = 3.0
NATS_GRACE_S = 1.0
NATS_READY_S = 20.0
TLS_CHECK_S = 3600.0  # how often a running stack checks whether its server certificate is due


@dataclass
class AgentConf:
    agent_id: str
    pool: str = "cpu"
    labels: str = ""


@dataclass
class Restarts:
    """The crash-loop limit: a child restarted CRASH_LIMIT times within CRASH_WINDOW_S is given up."""

    times: list[float] = field(default_factory=list)

    def allow(self, now: float) -> bool:
        self.times = [t for t in self.times if now - t < CRASH_WINDOW_S]
        if len(self.times) >= CRASH_LIMIT:
            return False
        self.times.append(now)
        return True


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: Restarts = field(default_factory=Restarts)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=child_preexec,
                # own process group: a terminal's Ctrl-C reaches only the supervisor, which then
                # stops the children itself (nats-server last)
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_or_kill(self, deadline: float) -> bool:
        """Wait until ``deadline`` (monotonic) for the child to exit, then SIGKILL its whole process
        group (what it started itself goes too) and reap it.  True if it had to be killed."""
        assert self.proc is not None
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
            return False
        except subprocess.TimeoutExpired:
            # the group id is the child's pid: still reserved, as the child is not reaped yet
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return True


class Stack:
    def __init__(self, settings: Settings, agents: list[AgentConf], echo=print) -> None:
        self.settings = settings
        self.data_dir = settings.embedded.data_dir.resolve()
        self.agents = agents
        self.echo = echo
        self.topo = Topology(settings.bus.subject_prefix, settings.bus.stream_replicas)
        # authentication is on: every process gets its own identity, anonymous clients are refused
        self.auth = LocalAuth(self.data_dir)
        self.nats = NatsServer(store_dir=self.data_dir / "nats", host=settings.embedded.nats_host,
                               port=settings.embedded.nats_port, log_file=self.data_dir / "logs" / "nats-server.log",
                               config_file=self.auth.server_config_file)
        self.tls = self._server_tls()
        self.tls_checked = 0.0
        self.nats_restarts = Restarts()
        self.children: list[Child] = []
        self.url = ""
        self.failure: str | None = None  # why the stack stopped by itself (nats-server kept crashing)
        self.authority: Authority | None = None  # the local authority's keys, once prepared
        self.http_port = settings.http.http_port  # 0: a free one, chosen at start
        self.admin_token_file = self.auth.root / "admin.token"  # the admin person's API token (HTTP)

    @property
    def http_url(self) -> str:
        """Where the HTTP API answers (``/api/v1``)."""
        host = self.settings.http.http_host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.http_port}/api/v1"

    def _server_tls(self) -> ServerTls | None:
        """What nats-server serves TLS with: the stack's own certificate, one given, or none."""
        e = self.settings.embedded
        if e.embedded_tls_cert is not None and e.embedded_tls_key is not None:
            return ServerTls(e.embedded_tls_cert.resolve(), e.embedded_tls_key.resolve(),
                             self.settings.bus.nats_ca_file.resolve() if self.settings.bus.nats_ca_file else None)
        return LocalTls(self.auth.tls_dir).server if e.embedded_tls else None

    @property
    def ca_file(self) -> Path | None:
        """The CA the stack's clients trust (TM_NATS_CA_FILE); None without TLS."""
        return self.tls.ca_file if self.tls is not None else None

    def _renew_tls(self, renew_ca: bool) -> str | None:
        """The stack's own CA and server certificate, made or renewed when due (not one given)."""
        if self.settings.embedded.embedded_tls_cert is not None or self.tls is None:
            return None
        self.tls_checked = time.monotonic()
        return LocalTls(self.auth.tls_dir).ensure(self.settings.embedded.nats_host, renew_ca=renew_ca)

    async def start(self) -> str:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self.tls is not None and self.tls.ca_file is None:
            # the clients must start with the TLS handshake, which they do when given the CA
            raise RuntimeError("a TLS certificate of your own needs TM_NATS_CA_FILE: the CA that signed it")
        made = await asyncio.to_thread(self._renew_tls, True)
        if made:
            self.echo(f"TLS: made {made} in {self.auth.tls_dir}")
        self.authority = await asyncio.to_thread(self.auth.prepare, self.topo, ["supervisor", *SERVICES],
                                                 [agent.agent_id for agent in self.agents], self.tls)
        try:
            self.nats.launch()  # in this (long-lived) thread: see NatsServer.launch
            self.url = await asyncio.to_thread(self.nats.wait_ready, NATS_READY_S)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(
                f"{exc}. Is another stack using port {self.settings.embedded.nats_port}? "
                f"Stop it or choose another port with TM_NATS_PORT. Log: {self.nats.log_file}"
            ) from exc
        # a restarted nats-server must listen where the services reconnect to, also when the
        # port was picked at random (-1)
        self.nats.port = int(self.url.rsplit(":", 1)[1])
        nc = await nats.connect(self.url, **connect_options(self.auth.creds_of("supervisor"), self.ca_file))
        try:
            await provision(nc.jetstream(), self.topo)
            await self.ensure_admin_token(nc)
        finally:
            await nc.close()
        s = self.settings
        if self.http_port == 0:
            self.http_port = free_port(s.http.http_host)
        base_env = dict(
            os.environ, TM_NATS_URL=self.url, TM_DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1",
            TM_SUBJECT_PREFIX=s.bus.subject_prefix, TM_STREAM_REPLICAS=str(s.bus.stream_replicas),
            TM_LOG_LEVEL=s.observability.log_level, TM_OTEL_EXPORTER=s.observability.otel_exporter,
        )
        if s.observability.otel_file:
            base_env["TM_OTEL_FILE"] = str(s.observability.otel_file)
        if self.ca_file is not None:
            base_env["TM_NATS_CA_FILE"] = str(self.ca_file)
        # the keys of the webhook secrets at rest: the notifier's alone (one given in the environment wins)
        base_env.pop("TM_SECRETS_KEY_FILE", None)
        secrets_key = s.notifier.secrets_key_file or await asyncio.to_thread(self.auth.ensure_secrets_key)
        for name in SERVICES:
            env = dict(base_env, TM_NATS_CREDS=str(self.auth.creds_of(name)))
            if name == "notifier":
                env["TM_SECRETS_KEY_FILE"] = str(secrets_key)
            if name == "job_intake":  # people's NATS credentials are signed with the local authority's key
                env["TM_USERS_SIGNING_KEY_FILE"] = str(self.auth.users_signer_file)
            if name == "api_gateway":
                env.update(TM_HTTP_HOST=s.http.http_host, TM_HTTP_PORT=str(self.http_port),
                           TM_HTTP_BUS_TIMEOUT_S=str(s.http.http_bus_timeout_s),
                           TM_MAX_REQUEST_BYTES=str(s.api.max_request_bytes))
            self.children.append(Child(name, f"services.{name}", env,
                                       self.data_dir / "logs" / f"{name.replace('_', '-')}.log"))
        for agent in self.agents:
            env = dict(base_env, TM_AGENT_ID=agent.agent_id, TM_AGENT_POOL=agent.pool, TM_AGENT_LABELS=agent.labels,
                       TM_NATS_CREDS=str(self.auth.creds_of(f"agent-{agent.agent_id}")))
            self.children.append(Child(f"agent {agent.agent_id}", "services.executor_agent", env,
                                       self.data_dir / "logs" / f"executor-agent-{agent.agent_id}.log"))
        if self.agents:
            await asyncio.to_thread(self.open_the_way_for_jobs)
        for child in self.children:
            child.start()
        return self.url

    async def ensure_admin_token(self, nc: NATS) -> None:
        """The person ``admin`` (a cluster admin) and its API token in ``<data_dir>/auth/admin.token``
        (0600), made at the first start and kept: the HTTP API's first credential.  Written into
        ``tm_users`` directly (job-intake is not up yet; every job-intake follows the bucket)."""
        try:
            kept: str | None = self.admin_token_file.read_text().strip()
        except FileNotFoundError:
            kept = None
        token, hashed = new_token()
        credential = Credential(credential_id(), "token", time.time(), token_hash=hashed)
        kv = await nc.jetstream().key_value(self.topo.bucket_users.name)
        try:
            changed = await kvstore.change(
                kv, user_rules.STACK_ADMIN,
                lambda user: user_rules.stack_admin(user, token_hash(kept) if kept else None, credential, time.time()),
                decode=msgspec.json.Decoder(UserRecord).decode, encode=encode)
        except ValueError as exc:
            self.echo(f"{exc} (HTTP API: issue tokens with `trainmaster user issue NAME --token`)")
            return
        if changed.written:
            write_private(self.admin_token_file, token + "\n")

    def open_the_way_for_jobs(self) -> None:
        """Jobs run as an unprivileged user, which must reach this Python and the agents' work
        folders: on a development machine (pyenv under /root) make the folders on the way crossable
        (o+x, not listable), saying so.  Nothing to do when not root (jobs then run as this user)."""
        if os.geteuid() != 0:
            return
        workdirs = [self.data_dir / "agents" / agent.agent_id for agent in self.agents]
        for folder in workdirs:
            folder.mkdir(parents=True, exist_ok=True)
        for folder in open_the_way([*python_paths(), *workdirs]):
            self.echo(f"made {folder} crossable by other users (o+x, not listable): jobs run as unprivileged "
                      f"users (their project's, or {self.settings.agent.agent_job_user}) and start the Python under it")

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart nats-server or a child that died (reaping it), at most CRASH_LIMIT times a
        minute each; a child beyond that is given up loudly, and without nats-server the stack
        stops (nothing works without the bus)."""
        while not stop.is_set():
            await self.heal_nats_store()
            if not await self.heal_nats():
                stop.set()
                return
            self.heal_children()
            await self.renew_tls()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)

    async def heal_nats_store(self) -> None:
        """Stop a nats-server that cannot write its store but could again (see nats_health): it
        would never recover by itself, nor exit; ``heal_nats`` then starts it again."""
        if self.nats.proc is None or self.nats.proc.poll() is not None or not self.nats.monitor_url:
            return
        error = await asyncio.to_thread(needs_restart, self.nats.monitor_url, self.nats.store_dir)
        if error is None:
            return
        self.echo(f"nats-server cannot write its store ({error}); restarting it now that there is room")
        await asyncio.to_thread(self.nats.stop, NATS_GRACE_S)

    async def renew_tls(self) -> None:
        """Issue the server certificate again when it is due, and have nats-server load it: a stack
        up for a year keeps serving.  Its CA is renewed only at a start (see LocalTls.ensure)."""
        if self.tls is None or time.monotonic() - self.tls_checked < TLS_CHECK_S:
            return
        made = await asyncio.to_thread(self._renew_tls, False)
        if made:
            self.echo(f"TLS: made {made}; nats-server reloads it")
            self.nats.reload()

    async def heal_nats(self) -> bool:
        """Restart nats-server if it died: same store directory, same port, so the services'
        clients reconnect and the streams carry on.  False once it keeps crashing."""
        proc = self.nats.proc
        if proc is not None and proc.poll() is None:  # poll() also reaps a dead one
            return True
        code = proc.returncode if proc is not None else None
        if not self.nats_restarts.allow(time.monotonic()):
            self.failure = f"nats-server keeps crashing (exit {code}); see {self.nats.log_file}"
            self.echo(f"{self.failure}; stopping the stack")
            return False
        self.echo(f"nats-server exited with {code}; restarting it on {self.url}")
        # launched here, in the event loop's (long-lived) thread: see NatsServer.launch
        self.nats.launch()
        try:
            await asyncio.to_thread(self.nats.wait_ready, NATS_READY_S)
        except (RuntimeError, TimeoutError) as exc:  # the next round tries again, within the limit
            self.echo(f"nats-server did not come back: {exc}. Log: {self.nats.log_file}")
            return True
        self.echo("nats-server is back; the services reconnect to it")
        return True

    async def keep_revocations(self) -> None:
        """Push the people's revoked credentials to nats-server as they change (auth/revocations.py),
        until cancelled.  The connections reconnect by themselves across a restarted nats-server."""
        assert self.authority is not None, "start() first"
        options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5}
        users = await nats.connect(self.url, **options,
                                   **connect_options(self.auth.creds_of("supervisor"), self.ca_file))
        system = await nats.connect(self.url, **options, **connect_options(self.auth.revocations_creds, self.ca_file))
        try:
            kv = await users.jetstream().key_value(self.topo.bucket_users.name)
            directory = await Directory(kv).start()
            follow = asyncio.ensure_future(directory.follow())
            try:
                await RevocationPusher(self.authority, self.topo, directory, system).run()
            finally:
                follow.cancel()
        finally:
            await users.close()
            await system.close()

    def heal_children(self) -> None:
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                continue
            if not child.restarts.allow(time.monotonic()):
                self.echo(f"{child.name} keeps crashing (exit {child.proc.returncode}); see {child.log_path}")
                child.proc = None
                continue
            self.echo(f"{child.name} exited with {child.proc.returncode}; restarting (log: {child.log_path})")
            child.start()

    def stop(self, grace_s: float = CHILD_GRACE_S) -> None:
        """SIGTERM every service and agent at once (an agent stops its nodes and reports their exits,
        the bus is still up); SIGKILL the process group of any still running after ``grace_s``;
        then nats-server."""
        live = [c for c in self.children if c.alive()]
        for child in live:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in live:
            if child.wait_or_kill(deadline):
                self.echo(f"{child.name} did not stop within {grace_s:g} s; killed (log: {child.log_path})")
        self.nats.stop(NATS_GRACE_S)


def free_port(host: str) -> int:
    """A port free on ``host`` now (the HTTP API's, when TM_HTTP_PORT is 0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


async def run_until_signalled(stack: Stack, after_start=None) -> None:
    """Start the stack, run ``after_start(url)`` if given, then wait for Ctrl-C / SIGTERM (or for
    nats-server to crash for good)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher: asyncio.Future | None = None
    revocations: asyncio.Future | None = None
    try:
        url = await stack.start()
        watcher = asyncio.ensure_future(stack.watch(stop))
        revocations = asyncio.ensure_future(stack.keep_revocations())
        revocations.add_done_callback(
            lambda done: done.cancelled() or done.exception() is None
            or stack.echo(f"revocations are not pushed to nats-server: {done.exception()}"))
        if after_start is not None:
            task = asyncio.ensure_future(after_start(url))
            await asyncio.wait([task, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
            elif task.exception():
                stack.echo(f"error: {task.exception()}")
        await stop.wait()
    finally:
        if revocations is not None:
            revocations.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await revocations
        if watcher is not None:
            # not awaited to its end: it may be waiting for a restarted nats-server to be ready,
            # which stack.stop ends at once (it stops that server too)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        stack.echo("stopping the stack ...")
        started = time.monotonic()
        await asyncio.to_thread(stack.stop)
        stack.echo(f"stopped in {time.monotonic() - started:.1f} s.")
    if stack.failure:
        raise RuntimeError(stack.failure)  # `trainmaster up` exits 1 with it
