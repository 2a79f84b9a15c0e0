"""How one node is launched, as plain data: where its inputs come from and land, its command line
(the boot file under the engine's runtime, or the custom image under podman), its environment
(an allowlist: ``trainmaster.jobenv``), its output and log locations, and how its exit turns into
a report.  Everything here is pure: what it needs to know about the host is passed in.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trainmaster.containers import DATA_MOUNT, OUTPUT_MOUNT, PODMAN_ERRORS, container_name, podman_run_argv
from trainmaster.jobenv import allowed, job_environment
from trainmaster.locations import locate
from trainmaster.messages import Assign, ParamValue


class Refused(Exception):
    """The node cannot run on this agent; ``exit_code`` 2 = a problem with the job's spec."""

    def __init__(self, reason: str, exit_code: int = 2) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass(frozen=True)
class RunKey:
    job_id: str
    attempt: int
    node: int

    @property
    def label(self) -> str:
        """How heartbeats list a running node: ``<job_id>/<node>/<attempt>``."""
        return f"{self.job_id}/{self.node}/{self.attempt}"

    def msg_id(self, suffix: str | int) -> str:
        return f"{self.job_id}.{self.attempt}.{self.node}.{suffix}"

    def run_dir(self, workdir: Path) -> Path:
        return workdir / "runs" / self.job_id / f"a{self.attempt}-n{self.node}"

    @classmethod
    def of(cls, assign: Assign) -> RunKey:
        return cls(assign.job_id, assign.attempt, assign.node)


@dataclass(frozen=True)
class Peer:
    """Where one node of a distributed job can be reached (its entry in the rendezvous bucket)."""

    addr: str
    port: int
    agent_id: str = ""


@dataclass(frozen=True)
class Source:
    """One data source: as given (``url``), and where the node finds it on this host (``host_path``):
    the local path itself, or the run's staging folder when it is downloaded or copied."""

    index: int
    url: str
    local: Path | None  # the local path of a local source
    host_path: Path
    staged: bool  # goes through the agent's cache (s3://, or local data in "copy" mode)


@dataclass(frozen=True)
class ContainerPlan:
    podman: str
    name: str
    image: str
    command: list[str]
    mounts: list[tuple[Path, str, bool]]
    cpus: float | None
    memory_mb: int | None
    network: str
    user: str | None = None  # "uid:gid" inside the container (the job user)
    read_only: bool = False  # a read-only root file system (with a tmpfs /tmp)
    pids_limit: int | None = None


@dataclass(frozen=True)
class Launch:
    kind: Literal["framework", "custom"]
    argv: list[str]  # framework: the boot file command; custom: the command inside the container
    cwd: Path
    env: dict[str, str]  # framework: the whole environment; custom: what the container gets
    sources: list[Source]
    data_dir: Path  # what --data_url names (on the host)
    data_links: list[tuple[Path, Path]]  # (link, target) for several local sources linked in place
    output_dir: Path  # what --train_url names (on the host)
    output_url: str | None  # where the outputs go after the run: a local path or s3://
    log_file: Path  # the node's log file on this host
    log_url: str | None  # s3:// folder the log file is uploaded to after the run
    header: str
    boot_file: Path | None = None
    container: ContainerPlan | None = None
    node_count: int = 1
    agents: tuple[str, ...] = ()  # the agent of each node (the Assign's): whose rendezvous entries count
    job_dirs: tuple[Path, ...] = ()  # the folders the job writes: made anew, owned by the job user
    cpus: float | None = None  # the flavor's: the node's cgroup limits
    memory_mb: int | None = None

    def process_argv(self, extra_env: Mapping[str, str], credentials: Mapping[str, str] | None = None) -> list[str]:
        """The command the agent starts, with the distributed environment known at start time.
        ``credentials`` (the project's ``AWS_*``) are named on podman's command line, never
        valued: a command line is readable by every user of the host and goes to the agent's log."""
        if self.container is None:
            return self.argv
        c = self.container
        return podman_run_argv(podman=c.podman, name=c.name, image=c.image, command=self.argv, mounts=c.mounts,
                               env={**self.env, **extra_env}, cpus=c.cpus, memory_mb=c.memory_mb, network=c.network,
                               user=c.user, read_only=c.read_only, pids_limit=c.pids_limit,
                               inherited=sorted(credentials or {}))

    def process_env(self, environ: Mapping[str, str], extra_env: Mapping[str, str],
                    credentials: Mapping[str, str] | None = None) -> dict[str, str]:
        if self.container is None:
            return {**self.env, **extra_env, **(credentials or {})}
        # podman's own environment (CONTAINERS_CONF), and the values of the credentials it passes
        # on by name; the rest of the job's goes in with -e NAME=value
        return {**environ, **(credentials or {})}


@dataclass(frozen=True)
class HostFacts:
    """What the plan needs to know about this agent and this job's resources (passed in)."""

    python: str  # interpreter of framework jobs: the engine's runtime
    virtual_env: str | None = None  # the runtime's folder, when it is a virtual environment
    podman: str | None = None
    container_network: str = "none"
    stage_local: Literal["link", "copy"] = "link"
    cpus: float | None = None  # the flavor's, for container limits
    memory_mb: int | None = None
    pids_max: int | None = None  # processes one node may have
    now: float = 0.0
    container_user: str | None = None  # "uid:gid" of the job user (None: the image's user)
    container_read_only: bool = False


# ------------------------------------------------------------------------------ pure planning
def local_path(value: str, field: str) -> Path:
    """The local path of ``/abs`` or ``file:///abs``.

    Read with ``trainmaster.locations`` so that the agent reads a location exactly as the
    validator did; a relative path never passed validation, and here it would silently mean
    "relative to wherever the agent was started"."""
    location = locate(value)
    if location.kind == "local":
        # normpath, not resolve(): keep the user's symlinks as they are
        return Path(os.path.normpath(location.path))
    if location.kind == "remote":
        raise Refused(f"{field}: {location.path}:// paths are not supported by this agent ({value})")
    if location.kind == "relative":
        raise Refused(f"{field}: {value!r} is a relative path; the agent needs an absolute one")
    raise Refused(f"{field}: {value!r} is not a usable location")


def storage_location(value: str, field: str) -> tuple[str, Path | None]:
    """A location the agent can read or write: ``("local", path)`` or ``("s3", None)``."""
    location = locate(value)
    if location.kind == "remote" and location.path == "s3":
        if not value[5:].split("/", 1)[0]:
            raise Refused(f"{field}: {value!r} names no bucket")
        return "s3", None
    return "local", local_path(value, field)


def format_param(value: ParamValue) -> str:
    # bool before int: bool is an int, and scripts expect true/false, not True/False
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "job"


def job_env(assign: Assign) -> dict[str, str]:
    """The job variables (the documented ``TM_JOB_*`` family and ``TM_ATTEMPT``)."""
    return {
        "TM_JOB_ID": assign.job_id,
        "TM_JOB_NAME": assign.name,
        "TM_JOB_VERSION": assign.version,
        "TM_ATTEMPT": str(assign.attempt),
    }


def distributed_env(node: int, node_count: int, peers: list[Peer]) -> dict[str, str]:
    """PyTorch-style ranks and master, and TensorFlow's ``TF_CONFIG``, from the rendezvous: node 0
    is the master; every node's own address and port is its TF worker address."""
    if len(peers) != node_count:
        raise ValueError(f"{len(peers)} peers for {node_count} nodes")
    master = peers[0]
    tf_config = {"cluster": {"worker": [f"{p.addr}:{p.port}" for p in peers]},
                 "task": {"type": "worker", "index": node}}
    return {
        "WORLD_SIZE": str(node_count),
        "RANK": str(node),
        "NODE_RANK": str(node),
        "LOCAL_RANK": "0",  # one process per node: a script that wants more spawns them itself
        "MASTER_ADDR": master.addr,
        "MASTER_PORT": str(master.port),
        "TF_CONFIG": json.dumps(tf_config, separators=(",", ":")),
    }


def plan_sources(assign: Assign, run_dir: Path, stage_local: str) -> tuple[list[Source], Path, list[tuple[Path, Path]]]:
    """Sources, the folder ``--data_url`` names, and the links for several local sources.

    One source is used where it is (local) or staged into ``<run>/input``; several are numbered
    ``<run>/input/0``, ``<run>/input/1``, ... (a link to a local folder, or a staged folder), so the
    script still gets one ``--data_url``."""
    input_dir = run_dir / "input"
    several = len(assign.spec.data) > 1
    sources: list[Source] = []
    for i, item in enumerate(assign.spec.data):
        if item.dataset is not None:
            raise Refused(f"data[{i}]: dataset sources ({item.dataset}) are not supported by this agent yet")
        if not item.path:
            raise Refused(f"data[{i}] has no path")
        kind, path = storage_location(item.path, f"data[{i}].path")
        staged = kind == "s3" or stage_local == "copy"
        slot = input_dir / str(i) if several else input_dir
        host_path = slot if staged or path is None else path
        sources.append(Source(i, item.path, path, host_path, staged))
    if not sources:
        return [], input_dir, []
    if not several:
        return sources, sources[0].host_path, []
    links = [(input_dir / str(s.index), s.local) for s in sources if not s.staged and s.local is not None]
    return sources, input_dir, links


def plan_launch(assign: Assign, run_dir: Path, host: HostFacts) -> Launch:
    """Everything needed to start the node, or ``Refused`` with a reason a user can act on."""
    spec = assign.spec
    algo = spec.algorithm
    if algo.source not in ("framework", "custom"):
        raise Refused(f"algorithm source {algo.source} is not supported by this agent yet")
    sources, data_dir, links = plan_sources(assign, run_dir, host.stage_local)

    output_url, log_url = spec.output_path, None
    if output_url:
        storage_location(output_url, "output_path")
    log_name = f"{safe_name(assign.name)}-{safe_name(assign.version)}-node{assign.node}.log"
    if spec.log_path and storage_location(spec.log_path, "log_path")[0] == "s3":
        log_dir, log_url = run_dir / "logs", spec.log_path
    else:
        log_dir = local_path(spec.log_path, "log_path") if spec.log_path else run_dir / "logs"
    log_file = log_dir / log_name
    output_dir = run_dir / "output"
    params = [f"--{name}={format_param(value)}" for name, value in spec.parameters.items()]
    job_dirs: tuple[Path, ...] = (output_dir,)

    container: ContainerPlan | None = None
    boot_file: Path | None = None
    if algo.source == "framework":
        if not algo.code_dir or not algo.boot_file:
            raise Refused("a framework job needs algorithm.code_dir and algorithm.boot_file")
        cwd = local_path(algo.code_dir, "algorithm.code_dir")
        # the boot file is read both ways the project writes it: relative to the code folder (job
        # files) or as an absolute path inside it (what the validator asks of API requests)
        if locate(algo.boot_file).kind == "relative":
            boot_file = Path(os.path.normpath(cwd / algo.boot_file))
        else:
            boot_file = local_path(algo.boot_file, "algorithm.boot_file")
        argv = [host.python, str(boot_file), f"--data_url={data_dir}", f"--train_url={output_dir}", *params]
        home, tmp = run_dir / "home", run_dir / "tmp"
        job_dirs = (output_dir, home, tmp)
        env = job_environment(job=job_env(assign), spec_env=spec.env, home=str(home), tmpdir=str(tmp),
                              runtime_bin=os.path.dirname(host.python) or None, virtual_env=host.virtual_env)
        shown = argv
    else:
        if not algo.image or not algo.command:
            raise Refused("a custom-image job needs algorithm.image and algorithm.command")
        if host.podman is None:
            raise Refused("custom-image jobs need podman on the agent's host, and it is not installed", 1)
        cwd = run_dir
        argv = [*algo.command, *params]
        # several sources: each is mounted at /data/<i> (a link to a host folder means nothing inside)
        mounts: list[tuple[Path, str, bool]] = (
            [(s.host_path, f"{DATA_MOUNT}/{s.index}", True) for s in sources] if len(sources) > 1
            else [(data_dir, DATA_MOUNT, True)])
        mounts.append((output_dir, OUTPUT_MOUNT, False))
        # the image's own PATH and HOME stay; what the spec may set and the job variables go in
        env = {"PYTHONUNBUFFERED": "1", **allowed(spec.env), **job_env(assign),
               "TM_DATA_URL": DATA_MOUNT, "TM_TRAIN_URL": OUTPUT_MOUNT}
        # a distributed job's containers must reach each other: they share the host's network
        network = "host" if assign.node_count > 1 else host.container_network
        container = ContainerPlan(host.podman, container_name(assign.job_id, assign.attempt, assign.node),
                                  algo.image, argv, mounts, host.cpus, host.memory_mb, network,
                                  host.container_user, host.container_read_only, host.pids_max)
        shown = podman_run_argv(podman=host.podman, name=container.name, image=algo.image, command=argv,
                                mounts=mounts, env={}, cpus=host.cpus, memory_mb=host.memory_mb, network=network,
                                user=container.user, read_only=container.read_only, pids_limit=host.pids_max)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(host.now))
    header = (f"# trainmaster job {assign.job_id} ({assign.name} {assign.version}) attempt {assign.attempt} "
              f"node {assign.node}/{assign.node_count} at {stamp}: {shlex.join(shown)}")
    return Launch(kind=algo.source, argv=argv, cwd=cwd, env=env, sources=sources, data_dir=data_dir,
                  data_links=links, output_dir=output_dir, output_url=output_url, log_file=log_file,
                  log_url=log_url, header=header, boot_file=boot_file, container=container,
                  node_count=assign.node_count, agents=tuple(assign.agents), job_dirs=job_dirs, cpus=host.cpus,
                  memory_mb=host.memory_mb)


def exit_code_of(returncode: int) -> int:
    """Shell convention: a process killed by signal N exits 128+N (SIGTERM -> 143)."""
    return 128 - returncode if returncode < 0 else returncode


def outcome(returncode: int, stop_reason: str | None, copy_error: str | None,
            last_error_line: str | None, container: bool = False,
            out_of_memory: str | None = None) -> tuple[int, str | None]:
    """The exit code and reason to report for a finished node.  ``out_of_memory``: the reason to
    give when the node's cgroup had a process OOM-killed; a node that failed then is reported as
    killed (137), whichever of its processes the kernel chose."""
    code = exit_code_of(returncode)
    what = "the container" if container else "the boot file"
    if stop_reason is not None:
        reason: str | None = stop_reason
    elif out_of_memory is not None and returncode != 0:
        code, reason = 137, out_of_memory
    elif returncode < 0:
        reason = f"{what} was killed by signal {signal.Signals(-returncode).name}"
    elif container and code == 137:
        reason = "the container was killed (exit 137): over its memory limit, or killed from outside"
    elif container and code in PODMAN_ERRORS:
        reason = f"{PODMAN_ERRORS[code]} (exit {code})"
        if last_error_line:
            reason += f": {last_error_line[:300]}"
    elif returncode != 0:
        reason = f"{what} exited with code {code}"
        if last_error_line:
            reason += f": {last_error_line[:300]}"
    else:
        reason = None
    if copy_error is not None:
        # a job whose model was not stored has not succeeded
        if code == 0:
            code = 1
        reason = f"{reason}; {copy_error}" if reason else copy_error
    return code, reason


def node_log_limit(job_limit_bytes: int, node_count: int) -> int:
    """The log bytes one node may write: the job's limit shared equally by its nodes."""
    return max(1024, job_limit_bytes // max(1, node_count))
