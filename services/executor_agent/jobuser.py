"""Who framework jobs run as, and the folders they may write.

An agent running as root runs every job as an unprivileged user, never as root.  With
``TM_AGENT_JOB_USERS=per-project`` (the default) a job of project P runs as P's own user,
``tmj-<the first 12 hex digits of sha256(P)>`` (a system user of its own group, no home, no login
shell, commented ``trainmaster jobs of project P``), created the first time a node of P runs here:
jobs of different projects cannot read each other's environment or files, nor signal each other.
With ``shared`` every job runs as ``TM_AGENT_JOB_USER`` (``tm-job`` by default).  The agent creates
``TM_AGENT_JOB_USER`` at start either way and runs its probe as that user (a project's user differs
only in its uid: what it can reach of the host is the same), and refuses to start when the setting
names root.  An agent that is not root cannot change user: its jobs run as itself (a warning says
so at start).

The folders a job writes are its own (owned by the job user, 0700): ``output`` (what
``--train_url`` names), ``home`` (``HOME``) and ``tmp`` (``TMPDIR``) in its run folder.  Everything
else it needs (the code, the data, the runtime) it may read and not write.  The agent's work folder
and its ``runs`` folders can be crossed but not listed (0711), its data cache not even crossed
(0700: a job reads its staged inputs through the hard links in its own run folder).

``identity_problem``, ``project_user_name``, ``wanted_user`` and ``account_problem`` are pure;
the rest reads the user database, runs ``useradd`` or changes owners and modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import pwd
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trainmaster.procs import JobIdentity, job_preexec

# what a job creates is readable by others where its folders let them: outputs keep the modes
# they always had once copied to output_path; the job's own folders (0700) keep them private here
JOB_UMASK = 0o022
CROSS_ONLY = 0o711
PRIVATE = 0o700


PROJECT_USER_PREFIX = "tmj-"
# 48 bits: no two projects of one cluster meet by chance, and the comment would tell if they did
PROJECT_USER_HASH_CHARS = 12
# a host-wide lock (root's /run), so that two agents of one host do not create a user at once
HOST_LOCK = Path("/run/trainmaster-job-users.lock")

JobUsersMode = Literal["per-project", "shared"]


class JobUserError(Exception):
    """The job user cannot be used; the message says what to do."""


def project_user_name(project: str) -> str:
    """The user jobs of ``project`` run as: a fixed prefix and a digest, since a project name may
    be 64 characters long and hold dots, and a user name is at most 32."""
    return PROJECT_USER_PREFIX + hashlib.sha256(project.encode()).hexdigest()[:PROJECT_USER_HASH_CHARS]


def project_user_comment(project: str) -> str:
    return f"trainmaster jobs of project {project}"


@dataclass(frozen=True)
class WantedUser:
    """The user a node runs as: its name, and the comment an existing account of that name must
    carry to be ours (None: any, the user the admin named in TM_AGENT_JOB_USER)."""

    name: str
    comment: str | None = None


def wanted_user(mode: JobUsersMode, shared_name: str, project: str) -> WantedUser:
    """Who a node of ``project`` runs as under ``TM_AGENT_JOB_USERS=mode``."""
    if mode == "shared":
        return WantedUser(shared_name)
    return WantedUser(project_user_name(project), project_user_comment(project))


def account_problem(wanted: WantedUser, uid: int, comment: str) -> str | None:
    """Why the existing account ``wanted.name`` (``uid``, GECOS ``comment``) may not run the
    node (None: it may)."""
    if uid == 0:
        return f"the user {wanted.name} has uid 0: jobs never run as root"
    if wanted.comment is not None and comment != wanted.comment:
        return (f"a user {wanted.name} exists that is not trainmaster's for this project (its comment is "
                f"{comment!r}, not {wanted.comment!r}): jobs do not run as a stranger's account; remove or "
                f"rename that user, or give it that comment if it is meant for these jobs")
    return None


def identity_problem(name: str, uid: int | None) -> str | None:
    """Why ``name`` (uid ``uid``, None: no such user) may not run jobs (None: it may)."""
    if not name:
        return "TM_AGENT_JOB_USER is empty: name the user framework jobs run as (default tm-job)"
    if name == "root" or uid == 0:
        return (f"TM_AGENT_JOB_USER={name}: jobs never run as root (uid 0); name an unprivileged user, "
                "or leave the setting unset for tm-job")
    return None


def create_user(name: str, comment: str | None = None) -> None:
    """A system user of its own group, without a home folder or a login shell."""
    argv = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", *(["--comment", comment] if comment else []), name]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JobUserError(f"cannot create the job user {name} (useradd: {exc}); create it by hand: "
                           f"{' '.join(argv)}") from exc
    if done.returncode != 0:
        raise JobUserError(f"cannot create the job user {name}: useradd exited with {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-300:]}")


def job_identity(name: str) -> JobIdentity | None:
    """The identity jobs run as: the job user (created when missing) for an agent running as root,
    None (the agent's own) otherwise.  Raises ``JobUserError``."""
    if os.geteuid() != 0:
        return None
    if (problem := identity_problem(name, None)) is not None:
        raise JobUserError(problem)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        create_user(name)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise JobUserError(f"the job user {name} was created but cannot be found") from None
    if (problem := identity_problem(name, entry.pw_uid)) is not None:
        raise JobUserError(problem)
    return JobIdentity(name, entry.pw_uid, entry.pw_gid)


class JobUsers:
    """Who each node runs as on an agent running as root (``TM_AGENT_JOB_USERS``): the shared user,
    or its project's, created on first use and remembered for the agent's life."""

    def __init__(self, mode: JobUsersMode, shared: JobIdentity, host_lock: Path = HOST_LOCK) -> None:
        self.mode = mode
        self.shared = shared
        self.host_lock = host_lock
        self._known: dict[str, JobIdentity] = {}
        self._lock = threading.Lock()  # two nodes of one project on this agent

    def for_project(self, project: str) -> JobIdentity:
        """The identity a node of ``project`` runs as (may run ``useradd``: call it off the event
        loop the first time); raises ``JobUserError``."""
        wanted = wanted_user(self.mode, self.shared.name, project)
        if wanted.name == self.shared.name:
            return self.shared
        if (known := self._known.get(project)) is not None:
            return known
        with self._lock, self._host_lock():
            identity = self._known.get(project) or ensure_user(wanted)
            self._known[project] = identity
        return identity

    @contextlib.contextmanager
    def _host_lock(self) -> Iterator[None]:
        try:
            fd = os.open(self.host_lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            # no /run: useradd's own lock still keeps /etc/passwd whole, and ensure_user looks again
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def ensure_user(wanted: WantedUser) -> JobIdentity:
    """The account ``wanted``, created when missing; a stranger's account of that name is refused."""
    try:
        entry = pwd.getpwnam(wanted.name)
    except KeyError:
        failed: JobUserError | None = None
        try:
            create_user(wanted.name, wanted.comment)
        except JobUserError as exc:
            failed = exc  # another agent of this host may have made it meanwhile: then it is there now
        try:
            entry = pwd.getpwnam(wanted.name)
        except KeyError:
            raise failed or JobUserError(f"the job user {wanted.name} was created but cannot be found") from None
    if (problem := account_problem(wanted, entry.pw_uid, entry.pw_gecos)) is not None:
        raise JobUserError(problem)
    return JobIdentity(wanted.name, entry.pw_uid, entry.pw_gid)


# the job user runs the job's interpreter and crosses into the agent's work folder
_PROBE = "import os, sys; os.stat(sys.argv[1])"


async def probe(identity: JobIdentity, python: str, workdir: Path, timeout_s: float = 30.0) -> None:
    """Check that the job user can start the interpreter jobs run under and reach the work folder
    (a Python installed in a private folder such as /root would fail every job)."""
    proc = await asyncio.create_subprocess_exec(
        python, "-I", "-c", _PROBE, str(workdir / "runs"), env={"PATH": "/usr/bin:/bin"}, cwd="/",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        preexec_fn=job_preexec(identity, JOB_UMASK))
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise JobUserError(f"the job user {identity.name} could not start {python} within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        said = out.decode("utf-8", "replace").strip().splitlines()
        raise JobUserError(
            f"the job user {identity.name} (uid {identity.uid}) cannot run {python} or reach {workdir}: "
            f"{said[-1] if said else f'exit {proc.returncode}'}.  Every folder on the way to the agent's Python "
            "and to its work folder must be searchable by other users (a Python under /root is not: "
            "install it under /usr or /opt, or make the folder searchable: chmod o+x)")


def guard_workdir(workdir: Path) -> None:
    """The work folder and ``runs`` can be crossed, not listed; the cache is the agent's alone."""
    (workdir / "runs").mkdir(parents=True, exist_ok=True)
    for folder in (workdir, workdir / "runs"):
        folder.chmod(CROSS_ONLY)
    cache = workdir / "cache"
    cache.mkdir(exist_ok=True)
    cache.chmod(PRIVATE)


def cross_only(folders: Iterable[Path]) -> None:
    for folder in folders:
        folder.chmod(CROSS_ONLY)


def give_folders(folders: Iterable[Path], identity: JobIdentity | None) -> None:
    """Make each folder anew, the job's own (0700)."""
    for folder in folders:
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(mode=PRIVATE, parents=True)
        if identity is not None:
            os.chown(folder, identity.uid, identity.gid)
