"""Storage roots: the folders a project's jobs may read from and write to on the hosts, and the
marker that says a destination folder is a job's own.

Pure: paths come in resolved (``os.path.realpath``: no ``..``, no symbolic links) and the callers
(the validator's facts, the agent) do the resolving.  ``TM_STORAGE_ROOTS`` maps a project (a job's
``account``) to its roots; ``"*"`` applies to every project, and a project's own list adds to it.

A root is a local folder (``/srv/team-a``) or an object-storage prefix (``s3://bucket/team-a``).
A project with no ``s3://`` root is not held to any prefix here: its jobs' ``s3://`` locations are
governed by the agent's own credentials and the bucket's region rule, as before ``s3://`` roots
existed.  A project with one is held to its ``s3://`` roots (``s3_root_of``).

A destination (``output_path``, ``log_path``) is written only when it is empty or absent, or
holds ``MARKER``: what trainmaster wrote there for an earlier run of the same job name in the same
project.  Anything else there belongs to someone else, and nothing is written over it.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

EVERY_PROJECT = "*"
MARKER = ".trainmaster-output.json"
MARKER_MAX_BYTES = 4096  # a marker is a few names: anything bigger is not one


def roots_of(config: Mapping[str, Sequence[str]], project: str) -> tuple[str, ...]:
    """The roots of ``project``: those of every project, then its own (each once, in order)."""
    out: list[str] = []
    for root in [*config.get(EVERY_PROJECT, ()), *(config.get(project, ()) if project != EVERY_PROJECT else ())]:
        if root not in out:
            out.append(root)
    return tuple(out)


def is_s3(location: str) -> bool:
    return location[:5].lower() == "s3://"


def local_roots(roots: Iterable[str]) -> tuple[str, ...]:
    return tuple(root for root in roots if not is_s3(root))


def s3_roots(roots: Iterable[str]) -> tuple[str, ...]:
    return tuple(root for root in roots if is_s3(root))


def root_of(real: str, roots: Iterable[str]) -> str | None:
    """The local root that ``real`` lies under (or is), or None.  Both sides are resolved absolute
    paths; a root matches whole components only (``/srv/a-evil`` is not under ``/srv/a``)."""
    path = posixpath.normpath(real)
    for root in local_roots(roots):
        base = posixpath.normpath(root)
        if path == base or path.startswith(base.rstrip("/") + "/"):
            return root
    return None


def s3_parts(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ``("bucket", "a/b")``: the key as the agent uses it (a leading ``/``
    is kept: ``s3://b//a`` is the key ``/a``, which is not under ``a``), less a trailing ``/``."""
    bucket, _, key = url[5:].partition("/")
    return bucket, key.rstrip("/")


def s3_root(url: str) -> str:
    """A configured ``s3://`` root in the form it is compared in (``s3://bucket`` or
    ``s3://bucket/prefix``), or ``ValueError`` saying why it is not one."""
    if not is_s3(url):
        raise ValueError(f"{url!r} is not an s3:// location")
    bucket, key = s3_parts(url)
    parts = key.split("/") if key else []
    if not bucket or "\x00" in url or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{url!r} is not s3://bucket or s3://bucket/prefix (no empty, '.' or '..' parts)")
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def _under(key: str, prefix: str) -> bool:
    return not prefix or key == prefix or key.startswith(prefix + "/")


def s3_root_of(url: str, roots: Iterable[str]) -> str | None:
    """The ``s3://`` root that ``url`` lies under (or is), or None; whole path segments only
    (``s3://b/team-a`` does not cover ``s3://b/team-a-evil``).

    The key must be under the root both as written and with ``.``/``..`` segments folded: S3 keys
    are literal (``a/../b`` is an object of its own on AWS) while some S3-compatible servers and
    clients fold the segments, so a key is allowed only when it means the same place either way."""
    bucket, key = s3_parts(url)
    folded = posixpath.normpath("/" + key).lstrip("/") if key else ""
    for root in s3_roots(roots):
        root_bucket, prefix = s3_parts(root)
        if bucket == root_bucket and _under(key, prefix) and _under(folded, prefix):
            return root
    return None


def describe_roots(roots: Sequence[str]) -> str:
    return ", ".join(roots) if roots else "(none)"


def not_allowed(what: str, path: str, real: str, project: str, roots: Sequence[str]) -> str:
    """Why ``path`` may not be used: the message of ``path_not_allowed`` and of the agent's refusal."""
    resolved = f" (it resolves to {real})" if real != path else ""
    same_kind = s3_roots(roots) if is_s3(path) else local_roots(roots)
    return (f"{what} {path}{resolved} is outside the storage roots of project {project}: "
            f"{describe_roots(same_kind)}; use a path under one of them (the cluster admin sets them in "
            "TM_STORAGE_ROOTS)")


# ------------------------------------------------------------------------------ the marker
@dataclass(frozen=True)
class Owner:
    """Whose a destination folder is: the job name in its project (and which run wrote it last)."""

    project: str
    name: str
    job_id: str = ""
    version: str = ""

    def encode(self) -> bytes:
        return json.dumps({"project": self.project, "name": self.name, "job_id": self.job_id,
                           "version": self.version}, sort_keys=True).encode() + b"\n"

    def same_job(self, other: Owner | None) -> bool:
        return other is not None and (other.project, other.name) == (self.project, self.name)


def read_marker(data: bytes | None) -> Owner | None:
    """The owner a marker names, or None for no marker or one that is not trainmaster's."""
    if not data or len(data) > MARKER_MAX_BYTES:
        return None
    try:
        found = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(found, dict):
        return None
    fields = {key: found.get(key) for key in ("project", "name", "job_id", "version")}
    if not all(isinstance(value, str) for value in fields.values()) or not fields["project"] or not fields["name"]:
        return None
    return Owner(**fields)  # type: ignore[arg-type]


Claim = Literal["empty", "ours", "foreign"]


def claim_of(entries: Iterable[str], marker: Owner | None, owner: Owner) -> Claim:
    """May ``owner`` write into a folder holding ``entries`` (names) and ``marker``?"""
    if owner.same_job(marker):
        return "ours"
    # a marker being written right now (its temporary file) is no one's file yet; a marker that
    # names another job, or that cannot be read, is someone else's
    if all(name.startswith(MARKER) and name != MARKER for name in entries):
        return "empty"
    return "foreign"


FOREIGN = "holds files of something else: choose an empty folder"
