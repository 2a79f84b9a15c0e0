"""Child processes: they die with their parent (nothing left orphaned), jobs start with a lesser
identity (``JobIdentity``, ``preexec_steps``), and a short command's output is captured within a
time limit."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
# loaded once here: loading a library in a forked child of a threaded parent can deadlock
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True) if sys.platform.startswith(
    "linux") else None


def child_preexec() -> None:
    """``preexec_fn`` for Popen: deliver SIGTERM to the child if its parent dies (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class JobIdentity:
    """Who a job runs as: the job user's uid and primary group (no supplementary groups)."""

    name: str
    uid: int
    gid: int


def no_new_privs() -> None:
    """No execve may gain privileges again: set-user-ID files and file capabilities are ignored."""
    if _LIBC is not None and _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(errno)}")


def become(identity: JobIdentity, umask: int) -> Callable[[], None]:
    """A pre-exec step: drop every group, then the group, then the user (in that order: once the
    uid is not 0 the groups cannot be changed any more), and set the umask."""
    def step() -> None:
        os.setgroups([])
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
        os.umask(umask)
    return step


def preexec_steps(*steps: Callable[[], None] | None) -> Callable[[], None]:
    """One ``preexec_fn`` running ``steps`` in order in the child, between fork and exec (None:
    skipped).  Steps that need root (joining the node's cgroup) go before ``become``; the death
    signal goes after it, since a change of credentials clears it."""
    chosen = [step for step in steps if step is not None]

    def run() -> None:
        for step in chosen:
            step()
    return run


def job_preexec(identity: JobIdentity | None, umask: int,
                as_root: Sequence[Callable[[], None] | None] = ()) -> Callable[[], None]:
    """A job's pre-exec: ``as_root`` (steps that need the agent's privileges), its identity (None:
    keep the agent's), no_new_privs, the death signal."""
    steps = [become(identity, umask)] if identity is not None else [lambda: os.umask(umask)]
    return preexec_steps(*as_root, *steps, no_new_privs, child_preexec)


async def run_captured(argv: list[str], timeout_s: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a short command: (exit code, stdout and stderr together).  Past ``timeout_s`` it is
    killed and the code is -1; cancelling the caller kills it too.  Not starting raises OSError."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                env=env)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError) as stopped:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        if isinstance(stopped, asyncio.CancelledError):
            raise
        await proc.wait()
        return -1, f"{os.path.basename(argv[0])} {' '.join(argv[1:3])} took longer than {timeout_s:.0f} s"
    return proc.returncode or 0, out.decode("utf-8", "replace")
