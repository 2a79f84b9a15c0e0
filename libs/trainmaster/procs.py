"""Child-process hygiene: children die with their parent, so nothing is left orphaned."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys

_PR_SET_PDEATHSIG = 1
# loaded once here: loading a library in a forked child of a threaded parent can deadlock
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True) if sys.platform.startswith(
    "linux") else None


def child_preexec() -> None:
    """``preexec_fn`` for Popen: deliver SIGTERM to the child if its parent dies (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
