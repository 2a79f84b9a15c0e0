"""Custom-image jobs run with podman: its configuration and the ``podman run`` command line.

What this host needs (see ``docs/operations.md``): podman with **runc** (crun refuses cgroups in
hybrid mode), no systemd (cgroupfs, file events), no registry (``pull_policy = "never"``: a missing
image fails at once with exit 125), and default ulimits at or below the shell's hard limits.  The
agent writes that configuration into its own work folder and points podman at it with
``CONTAINERS_CONF``, so nothing under /etc has to be set up by hand.

``containers_conf`` and ``podman_run_argv`` are pure; the rest runs podman.
"""

from __future__ import annotations

import os
import resource
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from trainmaster.procs import run_captured

# where a custom image finds its data (read-only) and writes what should be kept
DATA_MOUNT = "/data"
OUTPUT_MOUNT = "/output"
# podman's own failures (as opposed to the command's): 125 = podman (e.g. no such image),
# 126 = the command cannot be invoked, 127 = the command was not found
PODMAN_ERRORS = {125: "podman could not run the container (is the image there?)",
                 126: "the image's command cannot be invoked", 127: "the image's command was not found"}


def containers_conf(nofile_hard: int, nproc_hard: int, pid_max: int) -> str:
    """A containers.conf that works on a host without systemd and without a registry."""
    nofile = max(1024, min(nofile_hard, 1 << 20))
    nproc = max(1024, min(nproc_hard, pid_max, 1 << 20))
    return (
        "# written by the trainmaster executor-agent; podman reads it through CONTAINERS_CONF\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        'pull_policy = "never"\n'
    )


def write_containers_conf(path: Path) -> Path:
    """Write the configuration with this host's real hard limits; returns its path."""
    def hard(limit: int, fallback: int) -> int:
        value = resource.getrlimit(limit)[1]
        return fallback if value == resource.RLIM_INFINITY else int(value)

    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text().strip())
    except (OSError, ValueError):
        pid_max = 32768
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(containers_conf(hard(resource.RLIMIT_NOFILE, 65536), hard(resource.RLIMIT_NPROC, 32768), pid_max))
    return path


def container_name(job_id: str, attempt: int, node: int) -> str:
    return f"tm-{job_id}-a{attempt}-n{node}"


def podman_run_argv(*, podman: str, name: str, image: str, command: Sequence[str],
                    mounts: Sequence[tuple[Path, str, bool]], env: Mapping[str, str], cpus: float | None,
                    memory_mb: int | None, network: str,
                    workdir: str | None = None, user: str | None = None, read_only: bool = False,
                    pids_limit: int | None = None, inherited: Sequence[str] = ()) -> list[str]:
    """``podman run`` for one node.  ``mounts``: (host path, container path, read-only).

    ``--rm``: the container is removed when it ends; podman itself (not the docker CLI through the
    podman service, which always says 0) returns the command's exit code.  ``--init``: a small init
    forwards SIGTERM to the command, so a stop ends it at once (143) instead of after the grace.
    ``--memory-swap`` equal to ``--memory``: the limit is the limit, not the limit plus as much swap.
    No capabilities and ``no-new-privileges`` always; ``user`` ("uid:gid", the job user) runs the
    command as that user; ``read_only`` makes the image's file system read-only (with tmpfs folders
    on /tmp, /var/tmp and /run).  ``inherited``: variables named without a value (``-e NAME``):
    podman passes its own value on, which keeps secrets off the command line."""
    argv = [podman, "run", "--rm", "--name", name, "--init", "--network", network, "--pull", "never",
            "--cap-drop=ALL", "--security-opt=no-new-privileges"]
    if user:
        argv += ["--user", user]
    if read_only:
        argv += ["--read-only", "--read-only-tmpfs=true"]
    if cpus:
        argv += ["--cpus", f"{cpus:g}"]
    if memory_mb:
        argv += ["--memory", f"{memory_mb}m", "--memory-swap", f"{memory_mb}m"]
    if pids_limit:
        argv += ["--pids-limit", str(pids_limit)]
    for host, inside, mount_read_only in mounts:
        argv += ["-v", f"{host}:{inside}:{'ro' if mount_read_only else 'rw'}"]
    for key, value in sorted(env.items()):
        argv += ["-e", f"{key}={value}"]
    for key in inherited:
        argv += ["-e", key]
    if workdir:
        argv += ["-w", workdir]
    return [*argv, image, *command]


def find_podman() -> str | None:
    return shutil.which("podman")


def podman_env(conf: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["CONTAINERS_CONF"] = str(conf)
    return env


async def podman(args: Sequence[str], conf: Path, timeout_s: float = 60.0) -> tuple[int, str]:
    """Run a podman command (stop, rm, ...): (exit code, output); never raises for a failure."""
    binary = find_podman()
    if binary is None:
        return 127, "podman is not installed"
    try:
        code, out = await run_captured([binary, *args], timeout_s, podman_env(conf))
    except OSError as exc:
        return 127, str(exc)
    return code, out.strip()
