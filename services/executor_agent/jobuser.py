"""Who framework jobs run as, and the folders they may write.

An agent running as root runs every job as the job user (``TM_AGENT_JOB_USER``, ``tm-job`` by
default), never as root: it creates that user at start when it is missing (a system user with no
home and no login shell) and refuses to start when the setting names root.  An agent that is not
root cannot change user: its jobs run as itself (a warning says so at start).

The folders a job writes are its own (owned by the job user, 0700): ``output`` (what
``--train_url`` names), ``home`` (``HOME``) and ``tmp`` (``TMPDIR``) in its run folder.  Everything
else it needs (the code, the data, the runtime) it may read and not write.  The agent's work folder
and its ``runs`` folders can be crossed but not listed (0711), its data cache not even crossed
(0700: a job reads its staged inputs through the hard links in its own run folder).

``identity_problem`` is pure; the rest reads the user database, runs ``useradd`` or changes
owners and modes.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from trainmaster.procs import JobIdentity, job_preexec

# what a job creates is readable by others where its folders let them: outputs keep the modes
# they always had once copied to output_path; the job's own folders (0700) keep them private here
JOB_UMASK = 0o022
CROSS_ONLY = 0o711
PRIVATE = 0o700


class JobUserError(Exception):
    """The job user cannot be used; the message says what to do."""


def identity_problem(name: str, uid: int | None) -> str | None:
    """Why ``name`` (uid ``uid``, None: no such user) may not run jobs (None: it may)."""
    if not name:
        return "TM_AGENT_JOB_USER is empty: name the user framework jobs run as (default tm-job)"
    if name == "root" or uid == 0:
        return (f"TM_AGENT_JOB_USER={name}: jobs never run as root (uid 0); name an unprivileged user, "
                "or leave the setting unset for tm-job")
    return None


def create_user(name: str) -> None:
    """A system user of its own group, without a home folder or a login shell."""
    argv = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", name]
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
