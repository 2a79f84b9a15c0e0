"""Child processes: they die with their parent (nothing left orphaned), and a short command's
output is captured within a time limit."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
# loaded once here: loading a library in a forked child of a threaded parent can deadlock
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True) if sys.platform.startswith(
    "linux") else None


def child_preexec() -> None:
    """``preexec_fn`` for Popen: deliver SIGTERM to the child if its parent dies (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def preexec_steps(*steps: Callable[[], None] | None) -> Callable[[], None]:
    """One ``preexec_fn`` that runs ``steps`` in order (None: skipped).  Order matters: whatever
    needs root (joining the node's cgroup) comes before whatever drops it."""
    chosen = [step for step in steps if step is not None]

    def run_steps() -> None:
        for step in chosen:
            step()
    return run_steps


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
