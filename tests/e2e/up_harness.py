"""``trainmaster up`` as a user runs it, for the end-to-end tests: the real command in a
subprocess on a temporary data directory and a free port, its process tree seen from outside
(``/proc``), and clients of it as the local admin."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from nats.errors import Error as NatsError
from support import REPO, eventually

from trainmaster.client import ApiError, Client
from trainmaster.procs import child_preexec

CLI = str(Path(sys.executable).parent / "trainmaster")


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
        # the HTTP API on a free port (TM_HTTP_PORT=0): stacks of tests run beside each other
        env.update(TM_DATA_DIR=str(self.data_dir), TM_NATS_PORT=str(self.port), TM_LOG_LEVEL="INFO",
                   TM_HTTP_PORT="0", COLUMNS="200")
        env.update(self.env)
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


async def connected(client: Client) -> bool:
    with contextlib.suppress(OSError, NatsError, TimeoutError):
        await client.__aenter__()
        return True
    return False


# ------------------------------------------------------------------------------ jobs


# ------------------------------------------------------------------------------ the HTTP API
async def answering(url: str) -> None:
    """Wait for the gateway to listen (the stack prints its URL when it starts it)."""
    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(f"{url}/health")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(healthy, 30, 0.1, what="the HTTP API to answer")


def printed(up: Up) -> tuple[str, Path]:
    """The API's URL and the admin token's file, as `trainmaster up` printed them (last)."""
    urls = re.findall(r"HTTP API at (http://\S+/api/v1)", up.output())
    token_files = re.findall(r"token: in (\S+)", up.output())
    assert urls and token_files, up.output()
    return urls[-1], Path(token_files[-1])
