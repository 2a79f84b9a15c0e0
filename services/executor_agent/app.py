"""The executor agent: one per host.  Heartbeats its fingerprint, takes the Assign/Cancel
commands of its own durable consumer, runs nodes (``runner``), and reports them.

Delivery: commands arrive at least once and, within a fetched batch, concurrently.  Every
command is therefore idempotent: a run is keyed by (job, attempt, node), remembered in memory
while it runs and by its run folder (``runfolder``, states in ``runstate``) after; a repeated
Assign only re-sends the last report.  Reports carry a ``Nats-Msg-Id`` per (run, state), so
re-sending is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Literal

import msgspec
import structlog
from faststream.nats import NatsMessage

from services.executor_agent.cancels import RememberedCancel, remember, stops
from services.executor_agent.destinations import check_inputs, owner_of
from services.executor_agent.fingerprint import HostFacts, parse_labels, probe_host
from services.executor_agent.inputs import Inputs
from services.executor_agent.jobuser import (
    JobUserError,
    JobUsers,
    JobUsersMode,
    guard_workdir,
    job_identity,
    probe,
)
from services.executor_agent.launch import Refused, RunKey
from services.executor_agent.node import NodeExecutor, NodeExit
from services.executor_agent.runfolder import RunFolder
from services.executor_agent.runner import LogSink, Run, kill_leftovers
from services.executor_agent.runstate import (
    LOST_EXIT_CODE,
    LOST_REASON,
    AssignAction,
    RecoveryAction,
    on_assign,
    on_recovery,
)
from trainmaster.auth.permissions import agent_inbox
from trainmaster.bus import UNDECODABLE, Poison, durable_subscriber, ensure_consumer, publish_js, wait_for_streams
from trainmaster.cgroups import Limits
from trainmaster.containers import podman
from trainmaster.messages import AgentCommand, AgentHeartbeat, Assign, Cancel, NodeReport, encode
from trainmaster.names import TOKEN_RE
from trainmaster.procs import JobIdentity
from trainmaster.runtimes import RuntimeSpec
from trainmaster.service import ServiceContext
from trainmaster.settings import Settings
from trainmaster.storage_roots import Owner

_decode_command = msgspec.json.Decoder(AgentCommand).decode


class Agent:
    def __init__(self, ctx: ServiceContext, facts: HostFacts, labels: dict[str, str],
                 job_users: JobUsers | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.topo = ctx.topo
        self.log = ctx.log
        self.agent_id = ctx.settings.agent.agent_id
        self.inputs: Inputs | None = None  # presets and datasets (inputs.py), set by setup
        self.facts = facts
        self.labels = labels
        # absolute: the children run in their code folder, and paths handed to them must hold there
        self.workdir = Path(os.path.abspath(ctx.settings.agent_workdir_path))
        self.started_at = time.time()
        self.runs: dict[RunKey, Run] = {}
        self.watchers: set[asyncio.Task[None]] = set()
        # job id -> its latest Cancel, for Assigns published before it but handled after (cancels.py)
        self.cancels: dict[str, RememberedCancel] = {}
        self.stopping = False
        self.executor = NodeExecutor(ctx.settings, self.workdir, ctx.js, ctx.topo, self._publish_log, ctx.log,
                                     job_users)

    # ------------------------------------------------------------------------------ reports
    def report(self, key: RunKey, state: Literal["running", "exited"], exit_code: int | None = None,
               reason: str | None = None) -> NodeReport:
        return NodeReport(agent_id=self.agent_id, job_id=key.job_id, attempt=key.attempt, node=key.node,
                          state=state, exit_code=exit_code, reason=reason)

    async def publish_report(self, report: NodeReport) -> None:
        key = RunKey(report.job_id, report.attempt, report.node)
        await publish_js(self.ctx.broker, self.topo.agent_status(self.agent_id), encode(report),
                         stream=self.topo.stream_agent.name, msg_id=key.msg_id(report.state),
                         timeout=self.settings.bus.publish_timeout_s)

    async def publish_until_sent(self, report: NodeReport) -> None:
        """An exit report must not be lost to a bus hiccup: retry (same msg id) until it lands."""
        delay = 1.0
        while True:
            try:
                await self.publish_report(report)
                return
            except Exception as exc:
                self.log.warning("report not published; retrying", state=report.state, retry_in_s=delay,
                                 error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def report_running(self, run: Run, resend: bool = False) -> None:
        # the lock keeps "running" ahead of "exited" when a node ends while it is being reported
        async with run.report_lock:
            if resend or not run.running_reported:
                await self.publish_report(self.report(run.key, "running"))
                run.running_reported = True

    async def finish_run(self, key: RunKey, code: int, reason: str | None) -> None:
        """Record the exit on disk first (so a repeated Assign finds it), then report it."""
        report = self.report(key, "exited", code, reason)
        folder = RunFolder.of(self.workdir, key)
        folder.record_exit(report)
        self.runs.pop(key, None)
        await self.publish_until_sent(report)
        folder.record_reported()

    # ------------------------------------------------------------------------------ commands
    async def handle(self, msg: NatsMessage) -> None:
        try:
            command = _decode_command(msg.body)
        except UNDECODABLE as exc:
            raise Poison(f"not an agent command: {exc}") from exc
        # ids go into subjects and folder names: one subject token, no path tricks
        if not TOKEN_RE.match(command.job_id):
            raise Poison(f"job id {command.job_id[:140]!r} is not a valid id")
        metadata = msg.raw_message.metadata
        seq = metadata.sequence.stream if metadata else 0
        with structlog.contextvars.bound_contextvars(job_id=command.job_id):
            if isinstance(command, Assign):
                await self.assign(command, seq)
            else:
                self.cancel(command, seq)

    async def assign(self, cmd: Assign, seq: int) -> None:
        key = RunKey.of(cmd)
        with structlog.contextvars.bound_contextvars(attempt=cmd.attempt, node=cmd.node):
            # everything up to the insertion into self.runs is synchronous on purpose: commands of
            # one batch are handled concurrently, and a Cancel must find the run once it exists
            run = self.runs.get(key)
            folder = RunFolder.of(self.workdir, key)
            action = on_assign(folder.state(), running_here=run is not None)
            if action is AssignAction.RESEND_RUNNING:
                assert run is not None
                self.log.info("assignment already running here; re-sending its report")
                await self.report_running(run, resend=True)
                return
            if action is AssignAction.RESEND_EXIT:
                self.log.info("assignment already finished here; re-sending its report")
                await self.publish_report(folder.exit_report())
                folder.record_reported()
                return
            if self.stopping:
                # not acked: it is redelivered to this agent once it is back
                raise RuntimeError("agent is stopping; the assignment will be redelivered")
            # a preset runs as a framework job; dataset sources are staged as their manifest
            try:
                # links may have changed since validation: the paths as given, checked again now
                roots = self.executor.roots(cmd.spec.account)
                check_inputs(cmd.spec, roots)
                if self.inputs is not None:
                    cmd = await self.inputs.prepare(cmd, folder.path, roots)
                # its project's user, created off the event loop the first time (plan reads it then)
                await asyncio.to_thread(self.executor.identity_of, cmd.spec.account)
            except Refused as refused:
                self.log.warning("assignment refused", reason=refused.reason)
                await self.finish_run(key, refused.exit_code, refused.reason)
                return
            cancelled = self.cancels.get(cmd.job_id)
            if cancelled is not None and stops(cancelled, seq, cmd.attempt):
                self.log.info("assignment was cancelled before it started", reason=cancelled.reason)
                await self.finish_run(key, 143, f"stopped: {cancelled.reason} (before it started)")
                return
            await self.start(cmd, key, folder, seq)

    async def start(self, cmd: Assign, key: RunKey, folder: RunFolder, seq: int) -> None:
        """Plan (synchronously: see ``assign``), then prepare and run in the background: staging
        data or building a runtime may take far longer than the command's ack wait."""
        try:
            launch, runtime = self.executor.plan(cmd, folder.path, lambda: folder.record_assignment(cmd))
        except Refused as refused:
            self.log.warning("assignment refused", reason=refused.reason)
            await self.finish_run(key, refused.exit_code, refused.reason)
            return
        run = Run(key, launch, self.log, assign_seq=seq, containers_conf=self.executor.containers_conf)
        self.runs[key] = run
        try:
            sink = self.executor.open_sink(cmd, launch)
        except Refused as refused:
            await self.finish_run(key, refused.exit_code, refused.reason)
            return
        except OSError as exc:
            await self.finish_run(key, 2, f"cannot write the log file {launch.log_file}: {exc}")
            return
        if run.container:
            # what to remove should this agent die while the container runs (podman outlives it)
            folder.record_container(run.container)
        watcher = asyncio.create_task(self.watch(run, runtime, sink, owner_of(cmd)), name=f"watch-{key.label}")
        self.watchers.add(watcher)
        watcher.add_done_callback(self.watchers.discard)

    def started(self, run: Run) -> None:
        assert run.proc is not None
        # the process group to clean up should this agent die without stopping it
        RunFolder.of(self.workdir, run.key).record_pid(run.proc.pid)
        task = asyncio.create_task(self._report_started(run), name=f"running-{run.key.label}")
        self.watchers.add(task)
        task.add_done_callback(self.watchers.discard)

    async def _report_started(self, run: Run) -> None:
        try:
            await self.report_running(run)
        except Exception as exc:  # sent again before "exited" (see watch)
            self.log.warning("running report not published", error=f"{type(exc).__name__}: {exc}")

    async def watch(self, run: Run, runtime: RuntimeSpec | None, sink: LogSink, owner: Owner) -> None:
        try:
            result = await self.executor.execute(run, runtime, sink, self.started, owner)
        except Exception as exc:
            self.log.exception("running the node failed")
            run.stop("agent error", 0)
            result = NodeExit(1, f"the agent failed while running the node: {type(exc).__name__}: {exc}")
        if run.proc is not None:
            try:
                await self.report_running(run)
            except Exception as exc:  # "exited" below says everything; "running" was only courtesy
                self.log.warning("running report not published", error=f"{type(exc).__name__}: {exc}")
        await self.finish_run(run.key, result.exit_code, result.reason)

    def cancel(self, cmd: Cancel, seq: int) -> None:
        now = time.monotonic()
        remembered = RememberedCancel(seq, cmd.reason, now, cmd.attempt)
        self.cancels = remember(self.cancels, cmd.job_id, remembered, now)
        runs = [run for key, run in self.runs.items()
                if key.job_id == cmd.job_id and stops(remembered, run.assign_seq, key.attempt)]
        if not runs:
            self.log.info("cancel for a job that does not run here", reason=cmd.reason)
            return
        for run in runs:
            run.stop(f"stopped: {cmd.reason}", self.settings.agent.stop_grace_s)

    # ------------------------------------------------------------------------------ life cycle
    def heartbeat(self) -> AgentHeartbeat:
        return AgentHeartbeat(
            agent_id=self.agent_id, host=self.facts.host, pool=self.settings.agent.agent_pool, labels=self.labels,
            cpus=self.settings.agent.agent_cpus or self.facts.cpus,
            memory_mb=self.settings.agent.agent_memory_mb or self.facts.memory_mb, gpus=self.facts.gpus,
            running=sorted(key.label for key in self.runs), sent_at=time.time(), started_at=self.started_at,
        )

    async def heartbeat_loop(self) -> None:
        subject = self.topo.agent_heartbeat(self.agent_id)
        while True:
            try:
                # plain nats-py: a heartbeat every 2 s is no part of any job's trace
                await self.ctx.broker.connection.publish(subject, encode(self.heartbeat()))
            except Exception as exc:  # a missed beat is survivable; a dead loop is not
                self.log.warning("heartbeat not sent", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.settings.agent.heartbeat_interval_s)

    async def stop_all(self) -> None:
        """Agent shutdown: stop every node (no orphans), and report each as exited."""
        self.stopping = True
        # the agent's own stop is bounded (shutdown_grace_s): its nodes get half of that, so that
        # their exits are still reported before the stack stops nats-server
        grace_s = min(self.settings.agent.stop_grace_s, self.settings.bus.shutdown_grace_s / 2)
        for run in list(self.runs.values()):
            run.stop("agent stopped", grace_s)
        if self.watchers:
            _, pending = await asyncio.wait(set(self.watchers), timeout=self.settings.bus.shutdown_grace_s)
            if pending:
                self.log.error("some nodes were not reported before the agent stopped", count=len(pending))
        if self.executor.cgroups is not None:
            self.executor.cgroups.close()

    async def reconcile(self) -> None:
        """After a restart: report what ended unreported, and nodes lost with the previous agent."""
        await self.clear_leftover_groups()
        for folder in RunFolder.all(self.workdir):
            try:
                action = on_recovery(folder.state())
                if action is RecoveryAction.NOTHING:
                    continue
                if action is RecoveryAction.RESEND_EXIT:
                    report = folder.exit_report()
                else:
                    report = await self.record_lost(folder)
            except (OSError, ValueError) as exc:  # msgspec.DecodeError is a ValueError
                self.log.warning("unreadable run folder skipped", path=str(folder.path), error=str(exc))
                continue
            with contextlib.suppress(Exception):
                await self.publish_report(report)
                folder.record_reported()
                self.log.info("reported a node that ended before this start", job_id=report.job_id,
                              exit_code=report.exit_code, reason=report.reason)

    async def clear_leftover_groups(self) -> None:
        """Kill and remove the node cgroups of this agent's previous life (nothing runs yet): what a
        lost node started outside its process group (setsid, a daemon) is in there."""
        cgroups = self.executor.cgroups
        if cgroups is None:
            return
        for name in cgroups.leftovers():
            group = cgroups.group(name, Limits(None, None, 0))
            killed = await group.kill()
            removed = group.remove()
            self.log.warning("cleared the cgroup of a node of the previous agent", group=name, killed=killed[:20],
                             removed=removed)

    async def record_lost(self, folder: RunFolder) -> NodeReport:
        """Kill what is left of a node the previous agent ran, and record its exit as lost."""
        key = RunKey.of(folder.assignment())
        if (name := folder.container()) is not None:
            # the container runs under conmon, not in the node's process group
            code, out = await podman(["rm", "-f", "--ignore", name], self.executor.containers_conf)
            self.log.warning("removed the container of a lost node", container=name, code=code, output=out[-200:])
        if (pid := folder.pid()) is not None:
            # the death signal reached the boot file only, not what it forked
            killed = kill_leftovers(pid, key.job_id)
            if killed:
                self.log.warning("killed processes left by a lost node", job_id=key.job_id, pids=killed)
        report = self.report(key, "exited", LOST_EXIT_CODE, LOST_REASON)
        folder.record_exit(report)
        return report

    async def _publish_log(self, body: bytes, subject: str, headers: dict[str, str]) -> None:
        # the plain JetStream client, not broker.publish: the broker's telemetry middleware would
        # make one trace span per log line, and it was 3x slower (100k lines: 13 s against 4 s)
        await self.ctx.js.publish(subject, body, timeout=self.settings.bus.publish_timeout_s,
                                  stream=self.topo.stream_logs.name, headers=headers)


async def job_user(ctx: ServiceContext) -> JobUsers | None:
    """Who jobs run as (jobuser.py); the agent does not start when that cannot work."""
    def prepare() -> tuple[JobIdentity | None, Path]:
        workdir = Path(os.path.abspath(ctx.settings.agent_workdir_path))
        identity = job_identity(ctx.settings.agent.agent_job_user)
        guard_workdir(workdir)
        return identity, workdir

    try:
        identity, workdir = await asyncio.to_thread(prepare)
        if identity is not None:
            # a project's user differs from this one in its uid only: what it reaches of the host is the same
            await probe(identity, sys.executable, workdir)
    except (JobUserError, OSError) as exc:
        ctx.log.error("jobs cannot run as their user; the agent does not start", error=str(exc))
        raise SystemExit(2) from exc
    if identity is None:
        ctx.log.warning("the agent is not root: jobs run as its own user, which can read what the agent reads "
                        "(its credentials included); run the agent as root to run them as TM_AGENT_JOB_USER",
                        uid=os.geteuid())
        return None
    mode: JobUsersMode = "shared" if ctx.settings.agent.agent_job_users == "shared" else "per-project"
    if mode == "shared":
        ctx.log.info("jobs run as the job user", user=identity.name, uid=identity.uid, gid=identity.gid)
    else:
        ctx.log.info("jobs run as their project's user (tmj-<digest of the project>)", probed_as=identity.name)
    return JobUsers(mode, identity)


def inbox_of(settings: Settings) -> str:
    """The inbox prefix of this agent's connection: its credentials allow it only its own."""
    return agent_inbox(settings.agent.agent_id)


async def setup(ctx: ServiceContext) -> None:
    agent_id = ctx.settings.agent.agent_id
    if not TOKEN_RE.match(agent_id):
        raise ValueError(f"TM_AGENT_ID {agent_id!r}: use 1-128 letters, digits, '-' or '_'")
    structlog.contextvars.bind_contextvars(agent_id=agent_id)
    facts = await asyncio.to_thread(probe_host, ctx.log)
    job_users = await job_user(ctx)
    agent = Agent(ctx, facts, parse_labels(ctx.settings.agent.agent_labels), job_users)
    ctx.log.info("agent ready", pool=ctx.settings.agent.agent_pool, labels=agent.labels, cpus=facts.cpus,
                 memory_mb=facts.memory_mb, gpus=len(facts.gpus), workdir=str(agent.workdir))
    # the services provision the topology (an agent may not): wait for what it uses, the bucket
    # last (provisioning makes the buckets after every stream)
    spec = ctx.topo.consumer_agent(agent_id)
    await wait_for_streams(ctx.js, [spec.stream, f"KV_{ctx.topo.bucket_dataset_versions.name}"])
    # presets and dataset manifests (inputs.py)
    agent.inputs = Inputs(ctx.settings, await ctx.js.key_value(ctx.topo.bucket_dataset_versions.name))
    await agent.reconcile()
    await ensure_consumer(ctx.js, spec)
    durable_subscriber(ctx.broker, ctx.topo, spec, agent.handle, inbox_prefix=agent_inbox(agent_id))
    ctx.background(agent.heartbeat_loop(), "heartbeat")
    ctx.on_stop.append(agent.stop_all)
