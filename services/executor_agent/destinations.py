"""A node's files on this host: only under its project's storage roots, and never over someone
else's (blocking; the caller picks the thread).

The validator checked the paths when the job was created; symbolic links may have changed since,
so the agent checks again when it uses them:

- ``check_inputs``: the data paths, the code folder and the boot file (resolved) lie under a root,
  and ``s3://`` locations under an ``s3://`` root when the project has one;
- ``open_folder``: a destination folder is reached from its root through folders only (``openat``
  with ``O_NOFOLLOW``, made where missing), so no link planted on the way is followed;
- ``claim``: a destination is empty, or holds trainmaster's marker for the same job name in the
  same project (``storage_roots``); the marker is (re)written then;
- ``copy_outputs``: the run's output folder is copied there without following links
  (``safe_copy``); ``open_log``: a node's log file is opened there without following links.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from services.executor_agent.launch import Refused
from trainmaster import safe_copy
from trainmaster.locations import locate
from trainmaster.messages import Assign, JobRequest
from trainmaster.safe_copy import CopyStats, opened
from trainmaster.storage_roots import (
    FOREIGN,
    MARKER,
    MARKER_MAX_BYTES,
    Owner,
    claim_of,
    is_s3,
    not_allowed,
    read_marker,
    root_of,
    s3_root_of,
    s3_roots,
)

LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def resolve_roots(roots: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(root if is_s3(root) else os.path.realpath(root) for root in roots))


def owner_of(cmd: Assign) -> Owner:
    return Owner(cmd.spec.account, cmd.name, cmd.job_id, cmd.version)


def check_path(path: str, what: str, project: str, roots: Sequence[str]) -> str:
    """``path`` resolved (realpath), or ``Refused`` when that is not under a root."""
    real = os.path.realpath(path)
    if root_of(real, roots) is None:
        raise Refused(not_allowed(what, path, real, project, roots))
    return real


def check_s3(url: str, what: str, project: str, roots: Sequence[str]) -> None:
    """``Refused`` when the project has ``s3://`` roots and ``url`` is under none of them (a
    project without any is not held to a prefix: see ``storage_roots``)."""
    if s3_roots(roots) and s3_root_of(url, roots) is None:
        raise Refused(not_allowed(what, url, url, project, roots))


def check_inputs(spec: JobRequest, roots: Sequence[str]) -> None:
    """The job's locations as given (before presets and datasets are turned into folders of the
    agent's own): local data paths, code folder and boot file resolved under a local root;
    ``s3://`` data, output and log locations under an ``s3://`` root when the project has one."""
    project = spec.account
    for field, value in (("output_path", spec.output_path), ("log_path", spec.log_path)):
        if value and is_s3(value):
            check_s3(value, field, project, roots)
    for i, source in enumerate(spec.data):
        if source.path and is_s3(source.path):
            check_s3(source.path, f"data[{i}].path", project, roots)
        if source.path and (loc := locate(source.path)).kind == "local":
            check_path(os.path.normpath(loc.path), f"data[{i}].path", project, roots)
    algo = spec.algorithm
    if algo.source not in ("framework", "custom"):
        return
    code_dir = None
    if algo.code_dir and (loc := locate(algo.code_dir)).kind == "local":
        code_dir = os.path.normpath(loc.path)
        check_path(code_dir, "algorithm.code_dir", project, roots)
    if algo.boot_file:
        loc = locate(algo.boot_file)
        if loc.kind == "local":
            check_path(os.path.normpath(loc.path), "algorithm.boot_file", project, roots)
        elif loc.kind == "relative" and code_dir is not None:
            check_path(os.path.normpath(os.path.join(code_dir, algo.boot_file)), "algorithm.boot_file", project,
                       roots)


def open_folder(path: Path, what: str, project: str, roots: Sequence[str]) -> int:
    """A descriptor of the folder ``path``, made where missing, reached from its root without
    following any link (or ``Refused``)."""
    real = check_path(str(path), what, project, roots)
    root = root_of(real, roots)
    assert root is not None
    os.makedirs(root, exist_ok=True)  # a root is the admin's: made as configured
    fd = safe_copy.open_dir(root)
    relative = os.path.relpath(real, root)
    try:
        for part in [] if relative == "." else relative.split("/"):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, safe_copy.DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise Refused(f"{what} {path}: {part!r} on the way is not a folder (a symbolic link put there "
                              f"since it was checked?): {exc.strerror}") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def claim(fd: int, owner: Owner, what: str, path: Path) -> None:
    """Refuse a folder that holds someone else's files; mark it as ``owner``'s."""
    marker = None
    try:
        with opened(os.open(MARKER, safe_copy.READ_FLAGS, dir_fd=fd)) as marker_fd:
            if stat.S_ISREG(os.fstat(marker_fd).st_mode):
                marker = read_marker(os.read(marker_fd, MARKER_MAX_BYTES + 1))
    except OSError:
        pass
    if claim_of(os.listdir(fd), marker, owner) == "foreign":
        raise Refused(f"{what} {path} {FOREIGN}")
    tmp = f"{MARKER}.tmp-{uuid.uuid4().hex}"
    with opened(os.open(tmp, safe_copy.CREATE_FLAGS, 0o644, dir_fd=fd)) as out:
        os.write(out, owner.encode())
    os.rename(tmp, MARKER, src_dir_fd=fd, dst_dir_fd=fd)  # whole or absent: a node beside reads it


def claimed(path: Path, owner: Owner, what: str, roots: Sequence[str]) -> int:
    """``open_folder`` then ``claim``: the folder's descriptor."""
    fd = open_folder(path, what, owner.project, roots)
    try:
        claim(fd, owner, what, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def claim_destinations(destinations: Sequence[tuple[str, Path]], owner: Owner, roots: Sequence[str]) -> None:
    """Claim each local destination (``(field, folder)``) before the node runs, the outer first:
    one may lie inside the other (logs inside the outputs)."""
    for what, path in sorted(destinations, key=lambda item: len(item[1].parts)):
        os.close(claimed(path, owner, what, roots))


def copy_outputs(output_dir: Path, path: Path, owner: Owner, roots: Sequence[str]) -> CopyStats:
    """The run's outputs into ``path`` (checked and claimed again: links may have changed)."""
    with opened(claimed(path, owner, "output_path", roots)) as dst_fd, \
            opened(safe_copy.open_dir(output_dir)) as src_fd:
        # the marker is trainmaster's: a job's file of that name does not replace it
        return safe_copy.copy_tree(src_fd, dst_fd, skip=lambda name: name.startswith(MARKER))


def open_log(log_file: Path, owner: Owner, roots: Sequence[str]) -> BinaryIO:
    """A node's log file for appending, in its claimed folder; never through a link, and never a
    file that has other names (a hard link to a file elsewhere)."""
    with opened(claimed(log_file.parent, owner, "log_path", roots)) as dir_fd:
        try:
            fd = os.open(log_file.name, LOG_FLAGS, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            raise Refused(f"log_path {log_file.parent}: cannot open {log_file.name}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise Refused(f"log_path {log_file.parent}: {log_file.name} is not a plain file of its own "
                      "(a special file, or a hard link): remove it or choose an empty folder")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")
