"""``trainmaster up`` as a user runs it: the real command in a subprocess, on a temporary data
directory and a free port, watched from outside through its process tree and the public client.

- a SIGKILLed nats-server is reaped and started again (same port, same store): a job that ran
  through the outage and a job submitted after it both succeed;
- Ctrl-C (SIGINT) stops the whole tree (services, agents, job processes, nats-server) in under 5 s,
  even with a job that ignores SIGTERM and has a child of its own;
- a stack started again on the same data directory carries on the jobs the old one left running
  or queued, until each ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.errors import Error as NatsError
from support import REPO, eventually, script_job

from trainmaster.auth.local import LocalAuth
from trainmaster.client import ApiError, Client
from trainmaster.procs import child_preexec

pytestmark = pytest.mark.e2e

CLI = str(Path(sys.executable).parent / "trainmaster")
TERMINAL = {"Succeeded", "Failed", "Stopped"}
SHUTDOWN_LIMIT_S = 5.0

# waits until the file named by its first argument exists: a job that runs for as long as the
# test wants, whatever happens around it
WAIT_FOR_FILE = textwrap.dedent("""
    import pathlib, sys, time
    go = pathlib.Path(sys.argv[0]).with_name("go")
    print("waiting for", go, flush=True)
    while not go.exists():
        time.sleep(0.1)
    print("done", flush=True)
""")

# the worst case for a shutdown: ignores SIGTERM, and has a child (in its process group) that does too
STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print("child", child.pid, flush=True)
    time.sleep(600)
""")


# ------------------------------------------------------------------------------ processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def tree_of(root: int) -> set[int]:
    """``root`` and all its descendants (live or zombie)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def live_in_groups(pgids: set[int]) -> list[int]:
    """Processes (zombies excepted: already dead, waiting to be reaped) in any of ``pgids``."""
    out = []
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None and stat[0] != "Z" and stat[2] in pgids:
            out.append(pid)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Up:
    """One ``trainmaster up`` process and what it prints."""

    data_dir: Path
    port: int
    agents: int = 1
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def out_path(self) -> Path:
        return self.data_dir / "up.out"

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
        env.update(TM_DATA_DIR=str(self.data_dir), TM_NATS_PORT=str(self.port), TM_LOG_LEVEL="INFO",
                   COLUMNS="200", **self.env)
        with self.out_path.open("ab") as out:
            self.proc = subprocess.Popen([CLI, "up", "--agents", str(self.agents)], cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=child_preexec, start_new_session=True)

    async def ready(self, client: Client, timeout_s: float = 60.0) -> None:
        """The supervisor said so, job-intake answers, and every agent has registered."""
        await eventually(lambda: self.failed() or "trainmaster is up" in self.output(), timeout_s, 0.1,
                         what="trainmaster up to start")
        assert not self.failed(), self.output()

        async def agents_in() -> bool:
            with contextlib.suppress(NatsError, TimeoutError, ApiError):
                await client.list(limit=1)
                return len(await client.agents()) >= self.agents
            return False

        await eventually(agents_in, timeout_s, 0.2, what=f"{self.agents} agent(s) to register")

    def failed(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def nats_pid(self) -> int | None:
        assert self.proc is not None
        for pid in tree_of(self.proc.pid):
            stat = proc_stat(pid)
            if stat is not None and stat[0] != "Z" and "nats-server" in cmdline(pid):
                return pid
        return None

    async def interrupt(self) -> tuple[float, set[int]]:
        """SIGINT (a terminal's Ctrl-C); returns how long until no process of the tree, nor of any
        process group in it, was left, and the process groups it had."""
        assert self.proc is not None
        tree = tree_of(self.proc.pid)
        pgids = {stat[2] for pid in tree if (stat := proc_stat(pid)) is not None}
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)

        def gone() -> bool:
            self.proc.poll()  # reap the supervisor itself
            return not live_in_groups(pgids) and all(
                (stat := proc_stat(pid)) is None or stat[0] == "Z" for pid in tree)

        await eventually(gone, 30, 0.02, what="the stack's processes to end")
        took = time.monotonic() - started
        # gone() may have seen the supervisor a zombie just after its last poll(): reap it now, so
        # its exit code is known
        await asyncio.to_thread(self.proc.wait, 5)
        print(f"trainmaster up stopped in {took:.2f} s (SIGINT to the last process gone)")  # shown with -s
        return took, pgids

    def kill(self) -> None:
        """Clean-up after a failed test: nothing of the tree is left for the next one."""
        if self.proc is None or self.proc.poll() is not None:
            return
        tree = tree_of(self.proc.pid)
        pgids = {stat[2] for pid in tree if (stat := proc_stat(pid)) is not None}
        for pgid in pgids - {os.getpgid(0)}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def stacks() -> Iterator[list[Up]]:
    started: list[Up] = []
    try:
        yield started
    finally:
        for up in started:
            up.kill()


@pytest.fixture
async def client_of() -> AsyncIterator:
    opened: list[Client] = []

    async def open_client(up: Up) -> Client:
        client = Client(up.url, timeout=10, creds=LocalAuth(up.data_dir).admin_creds)
        await eventually(lambda: _connected(client), 60, 0.2, what="a connection to the stack's NATS")
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)


async def _connected(client: Client) -> bool:
    with contextlib.suppress(OSError, NatsError, TimeoutError):
        await client.__aenter__()
        return True
    return False


# ------------------------------------------------------------------------------ jobs
async def status_of(client: Client, job_id: str) -> dict | None:
    """The job's record, or None while the bus or a service is not there (a restart)."""
    with contextlib.suppress(NatsError, TimeoutError, ApiError):
        return await client.get(job_id)
    return None


async def wait_status(client: Client, job_id: str, wanted: set[str], timeout_s: float = 60.0) -> dict:
    async def reached() -> dict | None:
        record = await status_of(client, job_id)
        return record if record is not None and record["status"] in wanted else None

    return await eventually(reached, timeout_s, 0.2, what=f"job {job_id} to be {sorted(wanted)}")


async def create(client: Client, spec: dict) -> dict:
    job = await client.create(spec, request_id=f"e2e-{uuid.uuid4()}")
    assert "error" not in job, job
    return job


async def first_line_with(client: Client, job_id: str, text: str) -> str:
    lines = client.logs(job_id, follow=True)
    try:
        async for _, line in lines:
            if text in line:
                return line
    finally:
        await lines.aclose()
    raise AssertionError(f"job {job_id} ended without a log line with {text!r}")


def waiting_job(work: Path, **overrides) -> tuple[dict, Path]:
    """A job that runs until its ``go`` file exists; and that file."""
    name = f"wait-{uuid.uuid4().hex[:6]}"
    spec = script_job(work, name, WAIT_FOR_FILE, **overrides)
    return spec, Path(spec["algorithm"]["code_dir"]) / "go"


def quick_job(work: Path) -> dict:
    return script_job(work, f"quick-{uuid.uuid4().hex[:6]}", "print('quick', flush=True)\n")


# ------------------------------------------------------------------------------ tests
async def test_a_killed_nats_server_is_restarted_and_jobs_carry_on(stacks, client_of, tmp_path: Path) -> None:
    up = Up(tmp_path / "data", free_port(), agents=2)
    stacks.append(up)
    up.start()
    client = await client_of(up)
    await up.ready(client)
    running_spec, go = waiting_job(tmp_path / "work")
    running = await create(client, running_spec)
    await wait_status(client, running["id"], {"Running"})

    old = up.nats_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    # reaped (no zombie left) and started again, on the same port
    await eventually(lambda: proc_stat(old) is None, 10, 0.05, what="the killed nats-server to be reaped")
    await eventually(lambda: (pid := up.nats_pid()) is not None and pid != old, 20, 0.05,
                     what="a new nats-server")
    assert not up.failed(), up.output()

    # every service reconnects: a job submitted now runs to the end
    async def created() -> dict | None:
        # while job-intake's JetStream calls still fail it answers with an error: a client retries
        with contextlib.suppress(NatsError, TimeoutError, ApiError):
            return await create(client, quick_job(tmp_path / "work"))
        return None

    after = await eventually(created, 30, 0.5, what="job-intake to take a job again")
    record = await wait_status(client, after["id"], TERMINAL)
    assert record["status"] == "Succeeded", record
    # and the job that ran through the outage finishes too
    go.touch()
    record = await wait_status(client, running["id"], TERMINAL)
    assert record["status"] == "Succeeded", record
    assert "nats-server exited with -9; restarting it" in up.output()

    took, _ = await up.interrupt()
    assert took < SHUTDOWN_LIMIT_S, f"the stack took {took:.1f} s to stop"


async def test_ctrl_c_stops_the_whole_tree_within_5_s(stacks, client_of, tmp_path: Path) -> None:
    up = Up(tmp_path / "data", free_port())
    stacks.append(up)
    up.start()
    client = await client_of(up)
    await up.ready(client)
    job = await create(client, script_job(tmp_path / "work", f"stubborn-{uuid.uuid4().hex[:6]}", STUBBORN))
    await wait_status(client, job["id"], {"Running"})
    grandchild = int((await first_line_with(client, job["id"], "child")).split()[-1])
    assert proc_stat(grandchild) is not None
    assert up.nats_pid() is not None

    took, pgids = await up.interrupt()
    assert took < SHUTDOWN_LIMIT_S, f"the stack took {took:.1f} s to stop; its output:\n{up.output()}"
    # each in a group of its own: the supervisor, 4 services, the agent, nats-server, the job
    assert len(pgids) >= 8, pgids
    assert proc_stat(grandchild) is None or proc_stat(grandchild)[0] == "Z"
    assert up.proc is not None and up.proc.returncode == 0, up.output()


async def test_a_restarted_stack_carries_on_its_jobs(stacks, client_of, tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    # one CPU: the second job waits in the queue while the first runs
    first = Up(data_dir, port, env={"TM_AGENT_CPUS": "1"})
    stacks.append(first)
    first.start()
    client = await client_of(first)
    await first.ready(client)
    spec, go = waiting_job(tmp_path / "work", retry={"max_retries": 1})
    running = await create(client, spec)
    await wait_status(client, running["id"], {"Running"})
    queued_spec, queued_go = waiting_job(tmp_path / "work")
    queued = await create(client, queued_spec)
    assert (await client.get(queued["id"]))["status"] == "Pending"

    took, _ = await first.interrupt()
    assert took < SHUTDOWN_LIMIT_S
    go.touch()
    queued_go.touch()

    second = Up(data_dir, port, env={"TM_AGENT_CPUS": "1"})
    stacks.append(second)
    second.start()
    client = await client_of(second)
    await second.ready(client)
    # the node stopped with the old stack exited 143 (SIGTERM): retried by the job's policy
    record = await wait_status(client, running["id"], TERMINAL, timeout_s=90)
    assert record["status"] == "Succeeded", record
    assert record["attempt"] == 2, record
    record = await wait_status(client, queued["id"], TERMINAL, timeout_s=60)
    assert record["status"] == "Succeeded", record
    took, _ = await second.interrupt()
    assert took < SHUTDOWN_LIMIT_S
