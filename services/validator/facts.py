"""The validator's filesystem adapter: inspect every local path a job request mentions.

Blocking (``os.stat``, ``os.scandir``): the service calls ``gather`` in a worker thread.  The
result is plain data (``rules.PathFact`` per raw path string) that the pure rules read.
"""

from __future__ import annotations

import os
import stat

from services.validator.rules import PathFact, local_paths
from trainmaster.messages import JobRequest


def gather(spec: JobRequest) -> dict[str, PathFact]:
    """A ``PathFact`` for every local absolute path in ``spec``, keyed by the raw string."""
    return {raw: inspect(path) for raw, path in local_paths(spec)}


def inspect(path: str) -> PathFact:
    """What the filesystem says about ``path`` now (following symbolic links)."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError) as exc:
        return PathFact(error=_why(exc))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return PathFact(real=real)
    except (OSError, ValueError) as exc:
        # e.g. a parent directory we may not search: we cannot tell whether it exists
        return PathFact(real=real, error=_why(exc))
    is_dir = stat.S_ISDIR(st.st_mode)
    is_file = stat.S_ISREG(st.st_mode)
    readable = os.access(path, os.R_OK | (os.X_OK if is_dir else 0))
    has_entries = False
    if is_dir and readable:
        try:
            with os.scandir(path) as entries:
                has_entries = next(entries, None) is not None
        except OSError:
            readable = False
    return PathFact(exists=True, is_dir=is_dir, is_file=is_file, readable=readable, real=real,
                    has_entries=has_entries)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
