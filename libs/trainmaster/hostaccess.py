"""Folders another user must be able to cross (search, ``o+x``) to reach a path: what an agent's
unprivileged job user needs of the host to start the agent's Python and enter its work folder.

``closed_folders`` is pure over ``os.stat``; ``open_the_way`` changes the modes.  Only the single
host stack (``trainmaster up``) opens the way by itself, saying what it changed: a Python in a
private home (pyenv under ``/root``) is common on a development machine.  A production agent does
not change the host: it refuses to start and names the folder (services/executor_agent/jobuser.py).
Crossing is not listing: a folder made ``o+x`` shows nobody its names, and every file in it keeps
its own mode."""

from __future__ import annotations

import stat
import sys
from collections.abc import Iterable
from pathlib import Path


def closed_folders(targets: Iterable[Path]) -> list[Path]:
    """The folders on the way to each target (targets' own folders included, resolved) that
    others may not cross, outermost first, each once."""
    seen: list[Path] = []
    for target in targets:
        path = target.resolve()
        for folder in [*reversed(path.parents), *([path] if path.is_dir() else [])]:
            if folder not in seen and not folder.stat().st_mode & stat.S_IXOTH:
                seen.append(folder)
    return seen


def open_the_way(targets: Iterable[Path]) -> list[Path]:
    """Make every closed folder on the way to ``targets`` crossable (adds ``o+x`` only); returns
    the folders changed."""
    changed = closed_folders(targets)
    for folder in changed:
        folder.chmod(stat.S_IMODE(folder.stat().st_mode) | stat.S_IXOTH)
    return changed


def python_paths() -> list[Path]:
    """The running interpreter and its installation (a virtual environment's base included)."""
    return [Path(sys.executable), Path(sys.base_prefix) / "lib"]
