"""The storage credentials a job gets from its project: ``<TM_AGENT_PROJECT_SECRETS_DIR>/<project>.json``.

The file (the agent's user's own, mode 0600, in a folder no one else may write) holds
``{"s3": {"access_key_id", "secret_access_key", "session_token"?, "endpoint_url"?, "region"?}}``.
A node of that project gets them as ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (and
``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION`` when given): what boto3, the
AWS CLI and most S3 clients read.  Never the agent's own ``TM_S3_*``, never another project's.

What the credentials may reach is up to the S3 server: the cluster admin makes them with a policy
that allows only the project's prefixes (docs/security.md).  A file that others may read (or
write, or replace) is not trusted: the node gets nothing and the agent's log says why.

``parse``, ``file_problem``, ``folder_problem`` and ``S3Credentials.environment`` are pure; ``load``
reads the file.  The values never reach a log line: the dataclass does not show them.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from trainmaster.names import ACCOUNT_NAME_RE

MAX_FILE_BYTES = 64 * 1024
REQUIRED = ("access_key_id", "secret_access_key")
OPTIONAL = ("session_token", "endpoint_url", "region")
# the variable each field becomes in the job's environment
VARIABLES = {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY",
             "session_token": "AWS_SESSION_TOKEN", "endpoint_url": "AWS_ENDPOINT_URL",
             "region": "AWS_DEFAULT_REGION"}
MAX_VALUE_BYTES = 4096


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    region: str | None = None

    def environment(self) -> dict[str, str]:
        """The variables a node of the project gets (only those given)."""
        return {VARIABLES[name]: value for name in (*REQUIRED, *OPTIONAL)
                if (value := getattr(self, name)) is not None}


@dataclass(frozen=True)
class Loaded:
    """What ``load`` found: credentials, or None with the reason (None: the project has no file)."""

    credentials: S3Credentials | None = None
    problem: str | None = None


def parse(data: bytes) -> S3Credentials:
    """The credentials in a project's file, or ``ValueError`` saying what is wrong (never a value)."""
    try:
        found = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("it is not JSON") from None
    if not isinstance(found, dict) or set(found) != {"s3"} or not isinstance(found["s3"], dict):
        raise ValueError('it is not {"s3": {"access_key_id": ..., "secret_access_key": ...}}')
    s3 = found["s3"]
    unknown = sorted(set(s3) - {*REQUIRED, *OPTIONAL})
    if unknown:
        raise ValueError(f"unknown field(s) s3.{', s3.'.join(unknown)}: give {', '.join((*REQUIRED, *OPTIONAL))}")
    missing = [name for name in REQUIRED if not s3.get(name)]
    if missing:
        raise ValueError(f"s3.{' and s3.'.join(missing)} missing")
    for name, value in s3.items():
        if value is None and name in OPTIONAL:
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"s3.{name} is not a non-empty string")
        # a variable's value: no NUL (it cannot be passed) and no line break (nothing a key holds)
        if any(c in value for c in "\x00\r\n") or len(value.encode()) > MAX_VALUE_BYTES:
            raise ValueError(f"s3.{name} holds a NUL or line break, or is longer than {MAX_VALUE_BYTES} bytes")
    return S3Credentials(**{name: s3.get(name) for name in (*REQUIRED, *OPTIONAL)})


def folder_problem(mode: int, uid: int, agent_uid: int) -> str | None:
    """Why the secrets folder (``lstat``'s mode and owner) is not to be trusted (None: it is)."""
    if not stat.S_ISDIR(mode):
        return "it is not a folder (a symbolic link is not followed)"
    if uid != agent_uid:
        return f"it belongs to uid {uid}, not to the agent's user (uid {agent_uid})"
    if mode & 0o022:
        return f"group or others may write into it (mode {stat.S_IMODE(mode):04o}): make it 0700"
    return None


def file_problem(mode: int, uid: int, agent_uid: int, size: int) -> str | None:
    """Why a project's file (``fstat`` of it, opened without following links) is not to be trusted."""
    if not stat.S_ISREG(mode):
        return "it is not a plain file"
    if uid != agent_uid:
        return f"it belongs to uid {uid}, not to the agent's user (uid {agent_uid})"
    if mode & 0o077:
        return f"group or others may read or write it (mode {stat.S_IMODE(mode):04o}): make it 0600"
    if size > MAX_FILE_BYTES:
        return f"it is larger than {MAX_FILE_BYTES} bytes"
    return None


def load(folder: Path | None, project: str, agent_uid: int | None = None) -> Loaded:
    """The credentials of ``project`` (blocking).  Nothing, silently, when no folder is set or the
    project has no file; nothing with the reason when the folder or the file is not trustworthy."""
    if folder is None:
        return Loaded()
    if not ACCOUNT_NAME_RE.match(project):
        return Loaded(problem=f"project {project!r} is not a project name")
    uid = os.geteuid() if agent_uid is None else agent_uid
    where = f"{folder}/{project}.json"
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        why = "it is a symbolic link: name the folder itself" if os.path.islink(folder) else exc.strerror
        return Loaded(problem=f"the secrets folder {folder} cannot be opened: {why}")
    try:
        info = os.fstat(dir_fd)
        problem = folder_problem(info.st_mode, info.st_uid, uid)
        if problem is not None:
            return Loaded(problem=f"the secrets folder {folder} is not used: {problem}")
        try:
            fd = os.open(f"{project}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except FileNotFoundError:
            return Loaded()
        except OSError as exc:
            return Loaded(problem=f"{where} cannot be opened: {exc.strerror}")
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(fd)
            problem = file_problem(info.st_mode, info.st_uid, uid, info.st_size)
            if problem is not None:
                return Loaded(problem=f"{where} is not used: {problem}")
            data = file.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(dir_fd)
    try:
        return Loaded(credentials=parse(data))
    except ValueError as exc:
        return Loaded(problem=f"{where} is not used: {exc}")
