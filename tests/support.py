"""Helpers of the integration and end-to-end tiers (imported by the tests; fixtures are in conftest).

Services run as real subprocesses (``python -m services.<name>``) against a real nats-server.  A
service counts as ready once it answers on its request/reply subjects and its durable consumers
have a pull request waiting, so a test never races a service that is still starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from trainmaster.auth import permissions
from trainmaster.auth.authority import Authority, sign_person, write_private
from trainmaster.auth.credentials import connect_options
from trainmaster.auth.jwt import Permissions, creds_text
from trainmaster.auth.nkeys import KeyKind, KeyPair
from trainmaster.procs import child_preexec
from trainmaster.secretbox import ensure_key_file
from trainmaster.settings import Settings
from trainmaster.topology import Topology

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "examples" / "sklearn-iris"
T = TypeVar("T")

# every service started by a test, while it runs: the failure report shows the tail of their logs
LIVE: list[ServiceProcess] = []


# ------------------------------------------------------------------------------ async helpers
def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh event loop in a worker thread: usable from sync
    fixtures and (blocking briefly) from inside a running loop alike.

    Never start processes this way: children get ``PR_SET_PDEATHSIG`` (``procs.child_preexec``),
    which fires when the *thread* that started them exits, so they would die with the worker."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(factory())
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


async def eventually(check: Callable[[], Awaitable[T | None] | T | None], timeout_s: float = 15.0,
                     interval_s: float = 0.1, what: str = "condition") -> T:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval_s)


def unique(prefix: str) -> str:
    """A name no other test uses (tests share module-scoped stacks)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def call(nc: NATS, subject: str, body: dict, headers: dict | None = None) -> dict:
    """A request to a service that may be busy (a slow CI machine): answered within 20 s."""
    return await request_json(nc, subject, body, headers=headers, timeout_s=20)


async def request_json(nc: NATS, subject: str, body: bytes | dict | list | str, *,
                       headers: dict[str, str] | None = None, timeout_s: float = 15.0) -> Any:
    """A request/reply round trip with a JSON reply (``body`` is sent as is when it is bytes)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = await nc.request(subject, payload, timeout=timeout_s, headers=headers)
    return json.loads(reply.data)


def assert_error(reply: Any, code: str, field: str | None = None, detail_code: str | None = None) -> dict:
    """``reply`` is ``{"error": {"code", "message", "details": [{"field", "code", "message"}]}}``
    with the given code, and (if asked) a detail naming ``field`` (and ``detail_code``)."""
    assert isinstance(reply, dict) and "error" in reply, f"expected an error reply, got {reply!r}"
    error = reply["error"]
    assert set(error) >= {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    for detail in error["details"]:
        assert set(detail) == {"field", "code", "message"}, detail
        assert all(isinstance(v, str) and v for v in detail.values()), detail
    if field is not None:
        fields = [(d["field"], d["code"]) for d in error["details"]]
        assert any(f == field and (detail_code is None or c == detail_code) for f, c in fields), (
            f"no detail for field {field!r} (code {detail_code!r}) in {fields}; message: {error['message']}"
        )
    return error


async def subject_count(nc: NATS, stream: str, subject: str) -> int:
    """How many messages the stream holds on ``subject`` (exact, from the server's own count)."""
    info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def settled(nc: NATS, stream: str, durable: str, *, past_seq: int = 0, timeout_s: float = 15.0) -> Any:
    """Wait until the durable consumer has handled every message up to stream sequence ``past_seq``
    and holds nothing more: delivered and acked (or terminated) past it, none pending, none
    awaiting an ack or a delayed redelivery.  After this a handler can neither be running nor be
    called again for those messages, so asserting "nothing more happened" proves something (a
    sleep only hopes).  Returns the consumer info."""
    async def check() -> Any:
        info = await nc.jetstream().consumer_info(stream, durable)
        done = (info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq >= past_seq
                and info.ack_floor.stream_seq >= past_seq)
        return info if done else None

    return await eventually(check, timeout_s, what=f"{durable} on {stream} to settle past sequence {past_seq}")


async def read_stream(nc: NATS, subject: str, *, until: Callable[[dict], bool] | None = None,
                      count: int | None = None, timeout_s: float = 30.0) -> list[tuple[Any, dict]]:
    """Read ``subject`` from the first stored message with an ordered consumer (what any client
    does): ``(msg, json body)`` pairs, until ``until(body)`` is true or ``count`` were read."""
    sub = await nc.jetstream().subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    out: list[tuple[Any, dict]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout_s}s reading {subject}; got {[b for _, b in out]}")
            try:
                msg = await sub.next_msg(timeout=min(left, 1.0))
            except (TimeoutError, NatsTimeoutError):
                continue
            body = json.loads(msg.data)
            out.append((msg, body))
            if (until is not None and until(body)) or (count is not None and len(out) >= count):
                return out
    finally:
        await sub.unsubscribe()


# ------------------------------------------------------------------------------ job requests
def iris_job(tmp_path: Path, name: str, **overrides: Any) -> dict[str, Any]:
    """The sample job as a client sends it: absolute paths, output and logs under ``tmp_path``."""
    from trainmaster.jobfile import load_job_file

    spec = load_job_file(IRIS / "job.yaml")
    spec.update(name=name, output_path=str(tmp_path / "out" / name), log_path=str(tmp_path / "logs" / name))
    spec.update(overrides)
    return spec


def script_job(tmp_path: Path, name: str, script: str, **overrides: Any) -> dict[str, Any]:
    """A job whose boot file is ``script`` (Python source), written into its own code folder."""
    code = tmp_path / "code" / name
    code.mkdir(parents=True, exist_ok=True)
    (code / "main.py").write_text(script)
    data = tmp_path / "data" / name
    data.mkdir(parents=True, exist_ok=True)
    (data / "input.txt").write_text("x\n")
    spec: dict[str, Any] = {
        "name": name,
        "data": [{"path": str(data)}],
        "algorithm": {"source": "framework", "engine": "scikit-learn", "code_dir": str(code), "boot_file": "main.py"},
        "output_path": str(tmp_path / "out" / name),
        "log_path": str(tmp_path / "logs" / name),
        "resources": {"pool": "cpu", "node_count": 1},
    }
    spec.update(overrides)
    return spec


# ------------------------------------------------------------------------------ services
SERVICE_NAMES = {
    "job_intake": "job-intake",
    "validator": "validator",
    "scheduler": "scheduler",
    "notifier": "notifier",
    "executor_agent": "executor-agent",
    "api_gateway": "api-gateway",
}


@dataclass
class Readiness:
    """What a started service must show before a test may use it."""

    answers: tuple[str, ...] = ()  # request/reply subjects that must answer
    durables: tuple[tuple[str, str], ...] = ()  # (stream, durable) with a pull request waiting
    http: str | None = None  # a URL that must answer 200


def readiness_of(module: str, topo: Topology, env: dict[str, str]) -> Readiness:
    if module == "job_intake":
        c = topo.consumer_intake_submit
        return Readiness((topo.jobs("list"),), ((c.stream, c.durable),))
    if module == "validator":
        c = topo.consumer_validator
        return Readiness((), ((c.stream, c.durable),))
    if module == "scheduler":
        return Readiness((topo.agents_list,), tuple(
            (c.stream, c.durable) for c in (topo.consumer_scheduler_queue, topo.consumer_scheduler_status)))
    if module == "notifier":
        c = topo.consumer_notifier
        return Readiness((), ((c.stream, c.durable),))
    if module == "executor_agent":
        c = topo.consumer_agent(env["TM_AGENT_ID"])
        return Readiness((), ((c.stream, c.durable),))
    if module == "api_gateway":
        return Readiness(http=f"http://{env.get('TM_HTTP_HOST', '127.0.0.1')}:{env['TM_HTTP_PORT']}/api/v1/health")
    raise ValueError(f"unknown service module {module!r}")


@dataclass
class ServiceProcess:
    name: str
    module: str
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)
    signalled: bool = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def log_events(self) -> list[dict]:
        """The JSON log lines of the service (other lines skipped)."""
        out = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
        return out

    def sigterm(self) -> None:
        if self.proc is not None and self.proc.poll() is None and not self.signalled:
            self.proc.send_signal(signal.SIGTERM)
            self.signalled = True

    def terminate(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.sigterm()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        with contextlib.suppress(ValueError):
            LIVE.remove(self)
        return self.proc.returncode


def spawn(module: str, nats_url: str, data_dir: Path, *, log_dir: Path | None = None,
          env: dict[str, str] | None = None, label: str | None = None) -> ServiceProcess:
    name = label or SERVICE_NAMES[module]
    log_dir = log_dir or data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    full_env.update(TM_NATS_URL=nats_url, TM_DATA_DIR=str(data_dir), TM_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    if module == "notifier":  # it does not start without the keys of the webhook secrets at rest
        key_file = data_dir / "auth" / "secrets.key"
        ensure_key_file(key_file)
        full_env["TM_SECRETS_KEY_FILE"] = str(key_file)
    full_env.update(env or {})
    svc = ServiceProcess(name, module, log_dir / f"{name}.log", env=full_env)
    with svc.log_path.open("ab") as log:
        svc.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{module}"], cwd=REPO, env=full_env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=child_preexec,
        )
    LIVE.append(svc)
    return svc


# the local admin's creds of each embedded stack a test started, by its URL: a stack refuses
# anonymous clients
STACK_CREDS: dict[str, Path] = {}


async def connect(url: str, **options: Any) -> NATS:
    """A connection to a test's nats-server: with the stack's admin creds where it has some."""
    return await nats.connect(url, **connect_options(STACK_CREDS.get(url)), **options)


async def wait_ready(services: Iterable[ServiceProcess], nats_url: str, topo: Topology,
                     timeout_s: float = 30.0) -> None:
    """Wait until every service answers and pulls, or fail with the tail of its log."""
    nc = await connect(nats_url, connect_timeout=5)
    js = nc.jetstream()
    try:
        for svc in services:
            ready = readiness_of(svc.module, topo, svc.env)
            deadline = time.monotonic() + timeout_s
            pending = {"answers": list(ready.answers), "durables": list(ready.durables),
                       "http": [ready.http] if ready.http else []}
            while pending["answers"] or pending["durables"] or pending["http"]:
                if not svc.alive():
                    raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode if svc.proc else None} "
                                       f"while starting; its log:\n{svc.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{svc.name} not ready after {timeout_s}s (still waiting for {pending}); "
                                       f"its log:\n{svc.tail()}")
                for subject in list(pending["answers"]):
                    with contextlib.suppress(NoRespondersError, NatsTimeoutError, TimeoutError):
                        await nc.request(subject, b"{}", timeout=1)
                        pending["answers"].remove(subject)
                for stream, durable in list(pending["durables"]):
                    with contextlib.suppress(NotFoundError):
                        if (await js.consumer_info(stream, durable)).num_waiting > 0:
                            pending["durables"].remove((stream, durable))
                for url in list(pending["http"]):
                    if await asyncio.to_thread(answers_http, url):
                        pending["http"].remove(url)
                await asyncio.sleep(0.05)
    finally:
        await nc.close()


def answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class SecuredNats:
    """A nats-server in operator mode that trusts ``authority`` only: every connection needs a
    creds file it issued (``creds``); an anonymous one is refused."""

    url: str
    authority: Authority
    creds_dir: Path
    log_file: Path

    def creds(self, name: str, allowed: Permissions, account: str = "TM") -> Path:
        """A creds file for a new user ``name`` with ``allowed``, written where only its owner reads it."""
        path = self.creds_dir / f"{name}.creds"
        write_private(path, self.authority.issue(name, account, allowed))
        return path

    def service_creds(self, name: str = "service") -> Path:
        return self.creds(name, permissions.service())

    def agent_creds(self, agent_id: str, topo: Topology | None = None) -> Path:
        return self.creds(f"agent-{agent_id}", permissions.agent(topo or Topology(), agent_id))

    def person_creds(self, name: str) -> tuple[Path, str]:
        """(creds file, user key) of a person ``name`` in the people's account, signed with its
        scoped key the way job-intake signs them (the person's key made here, as the CLI does)."""
        person = KeyPair.generate(KeyKind.USER)
        token = sign_person(self.authority.users_signing, self.authority.users.public_key, person.public_key, name)
        path = self.creds_dir / f"{name}.creds"
        write_private(path, creds_text(token, person))
        return path, person.public_key

    def settings(self, creds: Path) -> Settings:
        return Settings(nats_url=self.url, nats_creds=creds)

    def violations(self) -> list[str]:
        """The permission violations nats-server logged so far (one line each)."""
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return [line for line in text.splitlines() if "Violation" in line]


class LoopThread:
    """An event loop running in a thread of its own for as long as a fixture needs it: for async
    set-up code that starts processes (see ``run_sync``) or keeps threads of its own alive."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fixture-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.loop.shutdown_default_executor(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


class Services:
    """Starts services as subprocesses and stops every one it started (SIGTERM, then SIGKILL)."""

    def __init__(self, data_dir: Path, topo: Topology | None = None) -> None:
        self.data_dir = data_dir
        self.topo = topo or Topology()
        self.started: list[ServiceProcess] = []

    def spawn(self, nats_url: str, *modules: str, env: dict[str, str] | None = None,
              per_service_env: dict[str, dict[str, str]] | None = None) -> list[ServiceProcess]:
        """Start ``modules`` (in the calling thread: see ``run_sync``) without waiting."""
        batch = []
        for module in modules:
            extra = dict(env or {}, **(per_service_env or {}).get(module, {}))
            label = SERVICE_NAMES[module]
            if module == "executor_agent":
                label = f"executor-agent-{extra['TM_AGENT_ID']}"
            batch.append(spawn(module, nats_url, self.data_dir, env=extra, label=label))
        self.started += batch
        return batch

    def start(self, nats_url: str, *modules: str, timeout_s: float = 30.0, **kwargs: Any) -> list[ServiceProcess]:
        """Start ``modules`` at once, then wait until all are ready (blocking: for sync fixtures)."""
        batch = self.spawn(nats_url, *modules, **kwargs)
        run_sync(lambda: wait_ready(batch, nats_url, self.topo, timeout_s))
        return batch

    async def astart(self, nats_url: str, *modules: str, timeout_s: float = 30.0,
                     **kwargs: Any) -> list[ServiceProcess]:
        """``start`` for async tests and fixtures: waits without blocking the running loop."""
        batch = self.spawn(nats_url, *modules, **kwargs)
        await wait_ready(batch, nats_url, self.topo, timeout_s)
        return batch

    def stop_all(self, grace_s: float = 15.0) -> dict[str, int | None]:
        """Stop everything started here; returns the exit code of each service."""
        codes: dict[str, int | None] = {}
        # agents first, so their nodes are stopped and reported while the others still run
        agents = [s for s in self.started if s.module == "executor_agent"]
        others = [s for s in self.started if s.module != "executor_agent"]
        for group in (agents, others):
            for svc in group:
                svc.sigterm()
            for svc in group:
                codes[svc.name] = svc.terminate(grace_s)
        self.started.clear()
        return codes


CHROMIUM = "/usr/bin/chromium"


def require_browser() -> None:
    """The web console is tested in a real browser and .ci/run installs it: a machine without it
    fails these tests, naming what is missing, instead of skipping them silently."""
    missing = [] if Path(CHROMIUM).is_file() else ["chromium"]
    if not Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc").is_file():
        missing.append("fonts-wqy-microhei")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("playwright (make .venv/.test-installed)")
    if missing:
        pytest.fail(f"the web console's tests need {', '.join(missing)}: run .ci/run, or "
                    "apt-get install -y chromium fonts-wqy-microhei", pytrace=False)


def require_container_tools() -> None:
    """Custom-image jobs are a claimed feature and .ci/run installs what they need: a machine
    without it fails these tests, naming what is missing, instead of skipping them silently."""
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if not Path("/bin/busybox").is_file():
        missing.append("busybox-static (/bin/busybox)")
    if missing:
        pytest.fail(f"custom-image tests need {', '.join(missing)}: run .ci/run, or "
                    f"apt-get install podman runc busybox-static", pytrace=False)
