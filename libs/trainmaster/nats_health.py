"""A nats-server that cannot write its store any more, although it could again.

When a JetStream file store fails a write (the disk was full, say), nats-server keeps that
stream's write error until the server restarts: publishes to the stream time out for good even
after space was freed, while the process stays up, so a plain "restart if it exited" (systemd's
``Restart=``, ``trainmaster up``'s supervisor) never acts.  ``/healthz`` reports it (503, "JetStream
stream '...' write error: ..."), so a watchdog restarts the server once the store has room again.
The decision is ``restart_clears_store_error``; the rest reads the server and the disk.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MIN_FREE_BYTES = 8 * 1024 * 1024  # restarting into a store with less room would fail again at once
MIN_FREE_FRACTION = 0.05


@dataclass(frozen=True)
class StoreSpace:
    free_bytes: int
    total_bytes: int


def restart_clears_store_error(write_error: str | None, space: StoreSpace) -> bool:
    """Restart only for a store write error, and only with room to write again."""
    if write_error is None:
        return False
    return space.free_bytes >= max(MIN_FREE_BYTES, int(space.total_bytes * MIN_FREE_FRACTION))


def write_error_of(health_reply: str) -> str | None:
    """The write error in a ``/healthz`` error body, if that is what it reports."""
    try:
        error = str(json.loads(health_reply).get("error", ""))
    except (ValueError, AttributeError):
        return None
    return error if "write error" in error else None


def store_write_error(monitor_url: str, timeout_s: float = 2.0) -> str | None:
    """What ``/healthz`` says of a failed store write, or None (healthy, another problem, or no answer)."""
    try:
        with urllib.request.urlopen(f"{monitor_url}/healthz", timeout=timeout_s):
            return None
    except urllib.error.HTTPError as unhealthy:
        return write_error_of(unhealthy.read().decode(errors="replace"))
    except OSError:
        return None


def store_space(store_dir: Path) -> StoreSpace:
    stats = os.statvfs(store_dir)
    return StoreSpace(free_bytes=stats.f_bavail * stats.f_frsize, total_bytes=stats.f_blocks * stats.f_frsize)


def needs_restart(monitor_url: str, store_dir: Path) -> str | None:
    """The store write error a restart of the server would clear now, or None."""
    error = store_write_error(monitor_url)
    if error is None:
        return None
    return error if restart_clears_store_error(error, store_space(store_dir)) else None
