"""The life of one node after its Assign was accepted: plan, prepare (stage the data, build or
reuse the engine's runtime, meet the other nodes of a distributed job), run, store the outputs and
the log, and say how it ended.  ``NodeExecutor`` holds what the agent shares between nodes (the
data cache, the runtime cache, the rendezvous, the podman configuration).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from nats.js import JetStreamContext

from services.executor_agent import credentials, destinations
from services.executor_agent.jobuser import JOB_UMASK, JobUserError, JobUsers, cross_only, give_folders
from services.executor_agent.launch import (
    HostFacts,
    Launch,
    Peer,
    Refused,
    RunKey,
    distributed_env,
    local_path,
    node_log_limit,
    outcome,
    plan_launch,
    storage_location,
)
from services.executor_agent.rendezvous import Rendezvous, RendezvousFailed, advertised_addr, free_port
from services.executor_agent.runner import (
    LogSink,
    Publish,
    Run,
    clean_inputs,
    folder_bytes,
    preflight,
    prepare_run_dir,
)
from services.executor_agent.staging import (
    DataCache,
    StagingFailed,
    human_bytes,
    upload_log,
    upload_outputs,
)
from trainmaster.catalog import CatalogError, load_engines, load_resources
from trainmaster.cgroups import (
    CgroupHost,
    CgroupsUnavailable,
    NodeGroup,
    node_limits,
    node_name,
    oom_reason,
    tree_name,
)
from trainmaster.containers import find_podman, podman_env, write_containers_conf
from trainmaster.messages import Assign
from trainmaster.procs import JobIdentity, child_preexec, job_preexec, preexec_steps
from trainmaster.runtimes import RuntimeBuildFailed, RuntimeCache, RuntimeSpec, read_requirements
from trainmaster.settings import Settings
from trainmaster.storage import Storage
from trainmaster.storage_roots import Owner, root_of
from trainmaster.topology import Topology


def local_destinations(launch: Launch) -> list[tuple[str, Path]]:
    """The folders on this host that the job's outputs and logs go to (its run folder aside)."""
    out: list[tuple[str, Path]] = []
    if launch.output_url and (local := storage_location(launch.output_url, "output_path")[1]) is not None:
        out.append(("output_path", local))
    if launch.log_url is None and not launch.log_file.parent.is_relative_to(launch.output_dir.parent):
        out.append(("log_path", launch.log_file.parent))
    return out


def virtual_env_of(python: str) -> str | None:
    """The virtual environment ``python`` belongs to (its folder holds ``pyvenv.cfg``), or None."""
    folder = Path(python).parent.parent
    return str(folder) if (folder / "pyvenv.cfg").is_file() else None


@dataclass(frozen=True)
class NodeExit:
    """How a node ended: what its exit report says."""

    exit_code: int
    reason: str | None


class NodeExecutor:
    def __init__(self, settings: Settings, workdir: Path, js: JetStreamContext, topo: Topology, publish_log: Publish,
                 log: structlog.stdlib.BoundLogger, job_users: JobUsers | None = None) -> None:
        self.settings = settings
        self.job_users = job_users  # who jobs run as (None: the agent's own user; jobuser.py)
        self.workdir = workdir
        self.topo = topo
        self.publish_log = publish_log
        self.log = log
        self.storage = Storage(settings)
        self.cache = DataCache(workdir / "cache", self.storage, endpoint=settings.storage.s3_endpoint_url,
                               concurrency=settings.agent.stage_concurrency,
                               max_bytes=settings.agent.stage_cache_max_bytes)
        self.runtimes = RuntimeCache(workdir / "runtimes", base_python=sys.executable,
                                     pip_timeout_s=settings.agent.runtime_pip_timeout_s)
        self.rendezvous = Rendezvous(js, topo.bucket_rendezvous.name, settings.agent.rendezvous_timeout_s)
        self.addr = advertised_addr(settings.bus.nats_url, settings.agent.agent_addr)
        self.podman = find_podman()
        self.containers_conf = write_containers_conf(workdir / "containers.conf")
        self.cgroups = self.setup_cgroups()

    def setup_cgroups(self) -> CgroupHost | None:
        """The agent's cgroups as ``TM_AGENT_CGROUPS`` says (auto: when the host allows)."""
        mode = self.settings.agent.agent_cgroups
        if mode == "off":
            self.log.warning("nodes run without cgroups (TM_AGENT_CGROUPS=off): no CPU, memory or process "
                             "limits, and what a node starts outside its process group survives a stop")
            return None
        try:
            host = CgroupHost.detect(tree_name(self.settings.agent.agent_id, self.workdir))
        except CgroupsUnavailable as exc:
            if mode == "required":
                raise RuntimeError(f"TM_AGENT_CGROUPS=required, and cgroups cannot be used here: {exc}") from exc
            self.log.warning("nodes run without cgroups: this host does not allow them (TM_AGENT_CGROUPS=auto)",
                             why=str(exc))
            return None
        self.log.info("nodes run in cgroups", layout=host.describe)
        return host

    def identity_of(self, project: str) -> JobIdentity | None:
        """Who a node of ``project`` runs as (None: the agent's own user); its project's user is
        created the first time (``Agent.assign`` asks off the event loop first); raises ``Refused``."""
        if self.job_users is None:
            return None
        try:
            return self.job_users.for_project(project)
        except JobUserError as exc:
            raise Refused(f"the agent cannot run jobs of project {project} as their own user: {exc}", 1) from exc

    # ------------------------------------------------------------------------------ plan
    def runtime_spec(self, cmd: Assign) -> RuntimeSpec | None:
        algo = cmd.spec.algorithm
        if algo.source != "framework" or not algo.engine:
            return None
        try:
            engine = load_engines(self.settings.catalog.catalog_dir).engine(algo.engine)
        except (CatalogError, OSError) as exc:
            raise Refused(f"the engine catalog cannot be read: {exc}", 1) from exc
        if engine is None:
            raise Refused(f"algorithm.engine {algo.engine!r} is not in this agent's engine catalog")
        version = engine.version(algo.engine_version)
        if version is None:
            raise Refused(f"{engine.name} has no version {algo.engine_version!r} in this agent's engine catalog")
        requirements = read_requirements(local_path(algo.code_dir, "algorithm.code_dir")) if algo.code_dir else ""
        return self.runtimes.spec(engine.name, version.version, version.packages, requirements)

    def flavor_limits(self, cmd: Assign) -> tuple[float | None, int | None]:
        try:
            pool = load_resources(self.settings.catalog.catalog_dir).pool(cmd.spec.resources.pool)
        except (CatalogError, OSError):
            return None, None
        flavor = pool.flavor(cmd.spec.resources.flavor) if pool else None
        if flavor is None:
            return None, None
        # podman refuses more CPUs than the host has
        return min(flavor.cpus, float(os.cpu_count() or 1)), flavor.memory_mb

    def plan(self, cmd: Assign, run_dir: Path, record: Callable[[], None]) -> tuple[Launch, RuntimeSpec | None]:
        """Synchronous on purpose (see ``Agent.assign``); ``record`` writes the assignment into the
        run folder first (a restarted agent finds it there); raises ``Refused``."""
        run_dir.mkdir(parents=True, exist_ok=True)
        record()
        runtime = self.runtime_spec(cmd)
        python = str(self.runtimes.python_of(runtime)) if runtime else sys.executable
        cpus, memory_mb = self.flavor_limits(cmd)
        identity = self.identity_of(cmd.spec.account)
        host = HostFacts(python=python, virtual_env=virtual_env_of(python),
                         podman=self.podman, container_network=self.settings.agent.container_network,
                         stage_local="copy" if self.settings.agent.stage_local == "copy" else "link",
                         cpus=cpus, memory_mb=memory_mb, pids_max=self.settings.agent.agent_node_pids_max,
                         now=time.time(),
                         container_user=f"{identity.uid}:{identity.gid}" if identity else None,
                         container_read_only=self.settings.agent.container_read_only)
        launch = plan_launch(cmd, run_dir, host)
        preflight(launch)
        try:
            prepare_run_dir(run_dir, launch)
            destinations.claim_destinations(local_destinations(launch), destinations.owner_of(cmd),
                                            self.roots(cmd.spec.account))
            # the job may cross its run folder, not list it; it writes only its own folders
            cross_only((run_dir.parent, run_dir))
            give_folders(launch.job_dirs, identity)
        except OSError as exc:
            raise Refused(f"cannot prepare the run's folders: {exc}") from exc
        return launch, runtime

    def roots(self, project: str) -> tuple[str, ...]:
        """The storage roots of ``project``, resolved now (links may change)."""
        return destinations.resolve_roots(self.settings.storage_roots_for(project))

    def open_sink(self, cmd: Assign, launch: Launch) -> LogSink:
        """The node's log sink; its file in the job's log_path is opened without following links
        (``Refused`` when that folder is not the job's)."""
        key = RunKey.of(cmd)
        opened = None
        if "log_path" in dict(local_destinations(launch)):
            opened = destinations.open_log(launch.log_file, destinations.owner_of(cmd), self.roots(cmd.spec.account))
        return LogSink(key=key, subject=self.topo.logs(key.job_id, str(key.node)), publish=self.publish_log,
                       file=launch.log_file, header=launch.header, log=self.log,
                       limit_bytes=node_log_limit(self.settings.agent.job_log_limit_bytes, cmd.node_count),
                       opened=opened)

    # ------------------------------------------------------------------------------ prepare
    async def prepare(self, run: Run, runtime: RuntimeSpec | None, sink: LogSink,
                      project: str | None = None) -> dict[str, str]:
        """Stage, build, meet: the environment the process gets on top of its plan."""
        launch = run.launch
        allowed = None
        if project is not None and any(source.staged and source.local is not None for source in launch.sources):
            roots = self.roots(project)
            run_dir = str(launch.output_dir.parent)

            def allowed(real: str) -> bool:
                # a dataset's folder in the run folder is the agent's own (inputs.py checked its files)
                return root_of(real, roots) is not None or root_of(real, [run_dir]) is not None
        for source in launch.sources:
            if source.staged:
                await self.cache.stage(source, sink.note, allowed)
        if runtime is not None:
            built = await self.runtimes.ensure(runtime, sink.note)
            if built.built and built.installed:
                sink.note(f"runtime {runtime.describe()} ready in {built.seconds:.1f} s")
            self.log.info("runtime ready", runtime=built.key, built=built.built, seconds=round(built.seconds, 3))
        if launch.node_count == 1:
            peers = [Peer("127.0.0.1", free_port("127.0.0.1"), self.settings.agent.agent_id)]
        else:
            me = Peer(self.addr, free_port(), self.settings.agent.agent_id)
            sink.note(f"waiting for the other {launch.node_count - 1} nodes (this node: {me.addr}:{me.port})")
            peers = await self.rendezvous.meet(run.key, launch.agents, me)
            sink.note(f"all {launch.node_count} nodes ready; master {peers[0].addr}:{peers[0].port}")
        return distributed_env(run.key.node, launch.node_count, peers)

    def project_credentials(self, project: str, sink: LogSink) -> dict[str, str]:
        """The ``AWS_*`` variables of ``project``'s storage credentials (read now: a file the admin
        rotated is used by the next node), or nothing; the values are never logged."""
        loaded = credentials.load(self.settings.agent.agent_project_secrets_dir, project)
        if loaded.problem is not None:
            self.log.warning("the project's storage credentials are not given to the node", project=project,
                             reason=loaded.problem)
            sink.note(f"no storage credentials for project {project}: the agent's file for it is not usable "
                      "(the agent's log says why)")
            return {}
        if loaded.credentials is None:
            return {}
        env = loaded.credentials.environment()
        self.log.info("the node gets its project's storage credentials", project=project, variables=sorted(env))
        return env

    # ------------------------------------------------------------------------------ the whole node
    async def execute(self, run: Run, runtime: RuntimeSpec | None, sink: LogSink,
                      on_started: Callable[[Run], None], owner: Owner) -> NodeExit:
        """Prepare, run and finish one node; never raises for the node's own failures."""
        launch = run.launch
        run.preparing = asyncio.create_task(self.prepare(run, runtime, sink, owner.project),
                                            name=f"prepare-{run.key.label}")
        await asyncio.wait({run.preparing})
        failure: NodeExit | None = None
        if run.preparing.cancelled():
            failure = NodeExit(143, run.stop_reason or "stopped")
        elif (exc := run.preparing.exception()) is not None:
            failure = self._prepare_failure(exc)
            sink.note(failure.reason or "preparation failed")
        if failure is not None:
            await sink.close(self.settings.bus.publish_timeout_s)
            clean_inputs(launch.output_dir.parent)
            return failure
        extra_env = run.preparing.result()
        secrets = self.project_credentials(owner.project, sink)
        try:
            run.cgroup = self.node_group(run)
            preexec = self.preexec(launch, run, self.identity_of(owner.project))
            await run.start(sink, launch.process_argv(extra_env, secrets), launch.process_env(
                podman_env(self.containers_conf), extra_env, secrets), preexec=preexec)
        except (OSError, subprocess.SubprocessError, Refused) as exc:
            if run.cgroup is not None:
                run.cgroup.remove()
            await sink.close(self.settings.bus.publish_timeout_s)
            return NodeExit(2, f"cannot start the node: {exc}")
        on_started(run)
        watchdog = asyncio.create_task(self.watch_disk(run), name=f"disk-{run.key.label}")
        try:
            returncode = await run.wait()
        finally:
            watchdog.cancel()
        return await self.finish(run, sink, returncode, owner)

    def preexec(self, launch: Launch, run: Run, identity: JobIdentity | None) -> Callable[[], None]:
        """The process's pre-exec: it joins the node's cgroup first (still root, before it can
        fork); then a framework job becomes its user (``identity``) with no_new_privs, while podman
        itself stays root (the container's command gets that user through ``--user``)."""
        join = run.cgroup.preexec() if run.cgroup is not None else None
        if launch.container is not None:
            return preexec_steps(join, child_preexec)
        return job_preexec(identity, JOB_UMASK, as_root=[join])

    def node_group(self, run: Run) -> NodeGroup | None:
        """The node's cgroup with its flavor's limits, made before its process starts."""
        if self.cgroups is None:
            return None
        launch = run.launch
        limits = node_limits(launch.cpus, launch.memory_mb, self.settings.agent.agent_node_pids_max)
        group = self.cgroups.group(node_name(run.key.job_id, run.key.attempt, run.key.node), limits)
        group.remove()  # a leftover of an earlier start of this very run
        group.create()
        return group

    async def watch_disk(self, run: Run) -> None:
        """Stop the node once its run folder holds more than ``TM_AGENT_NODE_DISK_MAX_BYTES``
        (its staged inputs, which the data cache bounds, left out)."""
        limit = self.settings.agent.agent_node_disk_max_bytes
        run_dir = run.launch.output_dir.parent
        pause = self.settings.agent.agent_node_disk_check_s
        while True:
            await asyncio.sleep(pause)
            started = time.monotonic()
            used = await asyncio.to_thread(folder_bytes, run_dir, frozenset({"input"}))
            # a folder of very many files: look less often, so the walk never takes over the disk
            pause = max(self.settings.agent.agent_node_disk_check_s, 20 * (time.monotonic() - started))
            if used > limit:
                self.log.warning("node over its disk limit; stopping it", used_bytes=used, limit_bytes=limit)
                run.stop(f"disk limit exceeded: the run folder holds {human_bytes(used)}, more than "
                         f"{human_bytes(limit)} (TM_AGENT_NODE_DISK_MAX_BYTES)", self.settings.agent.stop_grace_s)
                return

    def _prepare_failure(self, exc: BaseException) -> NodeExit:
        if isinstance(exc, Refused | StagingFailed):
            return NodeExit(exc.exit_code, exc.reason)
        if isinstance(exc, RuntimeBuildFailed):
            return NodeExit(2, exc.reason)
        if isinstance(exc, RendezvousFailed):
            return NodeExit(1, exc.reason)
        self.log.error("preparing the node failed", error=f"{type(exc).__name__}: {exc}")
        return NodeExit(1, f"the agent could not prepare the node: {type(exc).__name__}: {exc}")

    async def finish(self, run: Run, sink: LogSink, returncode: int, owner: Owner) -> NodeExit:
        launch = run.launch
        problems: list[str] = []
        local = dict(local_destinations(launch)).get("output_path")
        copied, copy_error = await upload_outputs(self.storage, launch.output_dir, launch.output_url, local, owner,
                                                  self.roots(owner.project))
        if copy_error:
            self.log.error("output copy failed", error=copy_error)
            problems.append(copy_error)
            sink.note(copy_error)
        elif launch.output_url and local is None:
            sink.note(f"outputs: {copied.files} files ({human_bytes(copied.bytes)}) uploaded to {launch.output_url}")
        if copied.skipped():
            sink.note(f"outputs: {copied.skipped()} not copied (never followed nor copied: only plain files "
                      "and folders are kept)")
        if launch.log_url:
            sink.note(f"log: uploading to {launch.log_url} (a copy stays at {launch.log_file})")
        await sink.close(self.settings.bus.publish_timeout_s)
        if launch.log_url and (log_error := await upload_log(self.storage, launch.log_file, launch.log_url)):
            self.log.error("log upload failed", error=log_error)
            problems.append(log_error)
        clean_inputs(launch.output_dir.parent)
        memory = run.cgroup.limits.memory_bytes if run.cgroup is not None else None
        code, reason = outcome(returncode, run.stop_reason, "; ".join(problems) or None, run.last_error_line,
                               container=run.container is not None,
                               out_of_memory=oom_reason(memory) if run.out_of_memory and memory else None)
        self.log.info("node exited", returncode=returncode, exit_code=code, reason=reason, log_lines=sink.lines)
        return NodeExit(code, reason)
