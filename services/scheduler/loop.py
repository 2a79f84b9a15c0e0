"""The scheduler's loop (the leader's only): lost agents, timeouts, a pass over the queue (planned by
the pure ``planner``) and its commit: the job-state changes and the assignments to agents.  The
view it decides on is fed by ``view_feed``; ``Scheduler`` holds both."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import structlog
from opentelemetry import propagate, trace

from services.scheduler.commands import AgentCommands
from services.scheduler.lease import LeaderLease
from services.scheduler.placement import ShapeCatalog
from services.scheduler.planner import PassResult, PassSettings, plan_pass
from services.scheduler.queue import QueuedJob
from services.scheduler.reconcile import agents_to_cancel
from services.scheduler.view import SchedulerView
from services.scheduler.view_feed import ViewFeed
from trainmaster.catalog import load_resources
from trainmaster.jobstore import ApplyResult, JobNotFound, JobStore
from trainmaster.messages import (
    AgentLost,
    AnyChange,
    JobRecord,
    Placed,
    Placement,
    PlacementImpossible,
    Status,
    TimedOut,
    Waiting,
)
from trainmaster.service import ServiceContext
from trainmaster.statemachine import IllegalTransition

log = structlog.get_logger()

TICK_S = 2.0  # the loop runs at least this often (lost agents, timeouts, queued jobs)
# pause between passes, so that wake-ups pile up into one pass: short after a pass that placed
# something (more may have come), longer after one that placed nothing from a queue that is not
# empty (walking a blocked queue of thousands is not free, and gains nothing: docs/benchmarks.md,
# "Figures the code relies on"); none after a pass over an empty queue
BUSY_GAP_S = 0.02
IDLE_GAP_S = 0.25
CATCH_UP_S = 5.0  # how long a new leader waits for its view to reach the bucket's last write
# reasons to wait (``Waiting``) written at most this many at a time, at most once this often: a
# reason is worth a write, not a share of a busy scheduler's writes (most waits end in a second)
EXPLAIN_BATCH = 64
EXPLAIN_EVERY_S = 1.0
_tracer = trace.get_tracer("trainmaster.scheduler")


@contextlib.contextmanager
def job_trace(record: JobRecord, name: str, tracing: bool = True) -> Iterator[None]:
    """A span in the job's own trace (job-intake records the request's ``traceparent``): the
    placement loop runs outside any message's span, so without this the Assign, and all the agent
    does with it, would start a trace of their own.  Nothing at all when tracing is off: making
    the span costs placement a measurable share of the scheduler's CPU (docs/benchmarks.md,
    "Figures the code relies on")."""
    if not tracing:
        yield
        return
    parent = propagate.extract({"traceparent": record.traceparent}) if record.traceparent else None
    with _tracer.start_as_current_span(name, context=parent, attributes={"job_id": record.id}):
        yield


class Scheduler:
    def __init__(self, ctx: ServiceContext, store: JobStore, lease: LeaderLease | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.topo = ctx.topo
        self.store = store
        self.lease = lease
        self.commands = AgentCommands(ctx)
        catalog = load_resources(self.settings.catalog.catalog_dir)
        self.view = SchedulerView(ShapeCatalog(catalog), self.settings.scheduler.agent_timeout_s,
                                  started_at=time.time())
        self.feed = ViewFeed(ctx, store, self.view, self.wake)
        self.reservations: dict[str, list[str]] = {}
        self.unsent: set[str] = set()  # Scheduled jobs whose assignments must be sent (again)
        self.leading = False
        self.tracing = self.settings.observability.otel_exporter != "none"
        self._reconciled_at = time.time()
        self._explained_at = 0.0
        self._wake = asyncio.Event()

    def wake(self, *_: object) -> None:
        self._wake.set()

    def remember(self, record: JobRecord, revision: int) -> None:
        self.feed.remember(record, revision)

    # ------------------------------------------------------------------ the loop (leader only)
    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            self._wake.clear()
            if self.lease is not None and not self.lease.is_leader():
                self.leading = False
                continue
            try:
                if not self.leading:
                    await self.take_office()
                now = time.time()
                if self.unsent:
                    await self.send_unsent()
                await self.reconcile(now)
                placed, more = await self.schedule_pass(now)
            except Exception:  # one bad pass must not end the scheduler: log, then try again
                log.exception("scheduling pass failed")
                await asyncio.sleep(1.0)
                continue
            if more:
                self._wake.set()  # capped by the batch size: go on at once
            elif placed:
                await asyncio.sleep(BUSY_GAP_S)
            elif self.view.queued:
                await asyncio.sleep(IDLE_GAP_S)  # a blocked queue: let wake-ups pile up
            # an empty queue cost nothing to walk: the next job is placed as soon as it comes

    async def take_office(self) -> None:
        """Becoming leader: catch up with the bucket (the previous leader's last writes), then re-send
        the assignments of Scheduled jobs (a crash between placing and assigning loses nothing)."""
        info = await self.ctx.js.stream_info(f"KV_{self.topo.bucket_jobs.name}")
        last = info.state.last_seq
        for _ in range(int(CATCH_UP_S / 0.02)):  # polled: the watch task moves max_revision
            if self.view.max_revision >= last:
                break
            await asyncio.sleep(0.02)
        self.leading = True
        log.info("leading: placing jobs", view_revision=self.view.max_revision, bucket_revision=last)
        self.unsent = {record.id for record in self.view.scheduled()}
        await self.send_unsent()

    async def send_unsent(self) -> None:
        """(Re-)send the assignments of Scheduled jobs that may not have reached their agents.  A job
        the view does not show Scheduled is read from the store (the view may lag a write whose
        reply was lost); one that cannot be read now stays for the next pass."""
        undecided: set[str] = set()
        for job_id in sorted(self.unsent):
            record = self.view.records.get(job_id)
            if record is None or record.status != Status.SCHEDULED:
                try:
                    record, revision = await self.store.get(job_id)
                except JobNotFound:
                    continue
                except Exception:
                    undecided.add(job_id)
                    continue
                self.remember(record, revision)
            if record.status == Status.SCHEDULED:
                with job_trace(record, "resend assignments", self.tracing):
                    await self.commands.assign(record)
        self.unsent = await self.commands.settle() | undecided
        if self.unsent:
            log.warning("assignments not acknowledged; sending them again next pass", jobs=len(self.unsent))

    def _may_commit(self) -> bool:
        """Commits start only with the lease valid for a good while yet (a commit of a batch takes a
        moment, and must end before a follower may take over)."""
        return self.lease is None or self.lease.remaining_s() > self.lease.lease_s / 4

    async def schedule_pass(self, now: float) -> tuple[int, bool]:
        """One pass: plan (pure), then commit.  How many jobs it placed, and whether it stopped at
        the batch size (more may fit)."""
        if not self.view.queued:
            self.reservations = {}
            return 0, False
        cluster = self.view.cluster(now)
        settings = PassSettings(
            strategy=self.settings.scheduler.scheduler_strategy,
            reserve_after_s=self.settings.scheduler.scheduler_reserve_after_s,
            max_placements=self.settings.scheduler.scheduler_batch,
            judge_impossible=now - self.view.started_at >= self.settings.scheduler.agent_timeout_s,
            max_reasons=EXPLAIN_BATCH if now - self._explained_at >= EXPLAIN_EVERY_S else 0,
        )
        result = plan_pass(list(self.view.queued.values()), cluster, self.view.usage_shares(cluster.totals), now,
                           settings, self.reservations, quotas=self.view.quotas, held=self.view.account_use)
        self._note_reservations(result)
        if result.waiting:
            self._explained_at = now
        if not self._may_commit():
            return 0, False
        await self.commit(result)
        return len(result.placed), result.more

    def _note_reservations(self, result: PassResult) -> None:
        for job_id, agents in result.reservations.items():
            if job_id not in self.reservations:
                log.info("agents held back for a blocked job", job_id=job_id, agents=len(agents))
        self.reservations = result.reservations

    async def commit(self, result: PassResult) -> None:
        gate = asyncio.Semaphore(self.settings.scheduler.scheduler_commit_concurrency)

        async def place(job: QueuedJob, agents: list[str]) -> None:
            async with gate:
                await self.place(job, agents)

        async def refuse(job: QueuedJob, why: str) -> None:
            async with gate:
                await self.change(job.job_id, PlacementImpossible(change_id="placement-impossible", reason=why))

        async def explain(job: QueuedJob, why: str) -> None:
            async with gate:
                await self.change(job.job_id, Waiting(change_id="waiting", reason=why))

        await asyncio.gather(*(place(job, agents) for job, agents in result.placed),
                             *(refuse(job, why) for job, why in result.impossible),
                             *(explain(job, why) for job, why in result.waiting))
        self.unsent |= await self.commands.settle()

    async def place(self, job: QueuedJob, agents: list[str]) -> None:
        record = self.view.records.get(job.job_id)
        if record is None or record.status != Status.PENDING:
            return
        if self.lease is not None and not self.lease.is_leader():
            return  # the lease ran out during the batch: the next leader decides
        placements = [Placement(node=i, agent_id=a, host=self.view.agents[a].host) for i, a in enumerate(agents)]
        attempt = record.attempt + 1
        change = Placed(change_id=f"placed.{attempt}", attempt=attempt, placements=placements)
        with structlog.contextvars.bound_contextvars(job_id=record.id), job_trace(record, "place job", self.tracing):
            result = await self.change(record.id, change)
            if result is None:
                # a write that timed out may still have landed: then its Assign is due all the same
                # (send_unsent sends it once the stored record says Scheduled, and drops it if not)
                self.unsent.add(record.id)
            elif result.applied:
                log.info("job placed", agents=sorted(set(agents)), nodes=len(agents), attempt=attempt)
                try:
                    await self.commands.assign(result.record)
                except Exception as exc:  # sent again next pass
                    log.warning("assignment not sent", error=f"{type(exc).__name__}: {exc}")
                    self.unsent.add(record.id)

    async def change(self, job_id: str, change: AnyChange) -> ApplyResult | None:
        """Apply a change decided on the view (its record tried first); None when it does not apply
        any more (the job moved on meanwhile).  A failed write is logged and left to the next pass."""
        record = self.view.records.get(job_id)
        known = (record, self.view.revisions[job_id]) if record is not None else None
        try:
            result = await self.store.apply(job_id, change, known=known)
        except IllegalTransition as exc:
            log.info("job moved on before the change", job_id=job_id, change=change.change_id, why=str(exc))
            with contextlib.suppress(JobNotFound):
                self.remember(*await self.store.get(job_id))
            return None
        except Exception as exc:
            log.warning("change not written; the next pass tries again", job_id=job_id, change=change.change_id,
                        error=f"{type(exc).__name__}: {exc}")
            return None
        self.remember(result.record, result.revision)
        return result

    # ------------------------------------------------------------------ lost agents, timeouts
    async def reconcile(self, now: float) -> None:
        if now - self._reconciled_at > max(self.settings.scheduler.agent_timeout_s / 2, 3 * TICK_S):
            # this replica was paused or starved (or just took office): silence it could not hear
            # is not the agents' fault, so every agent gets a fresh timeout instead of being lost
            self.view.grace(now)
        self._reconciled_at = now
        for agent_id in self.view.newly_lost(now):
            self.view.lost.add(agent_id)
            jobs = self.view.jobs_on(agent_id)
            log.warning("agent lost", agent_id=agent_id, silent_s=round(now - self.view.last_seen.get(
                agent_id, self.view.started_at), 1), jobs=len(jobs))
            for record in jobs:
                change = AgentLost(change_id=f"agent-lost.{agent_id}.a{record.attempt}", attempt=record.attempt,
                                   agent_id=agent_id)
                await self._end_attempt(record, change, f"agent {agent_id} lost")
        for record in self.view.timed_out(now):
            change = TimedOut(change_id=f"timed-out.a{record.attempt}", attempt=record.attempt,
                              limit_s=record.spec.max_run_time_s or 0.0)
            await self._end_attempt(record, change, "timed out")

    async def _end_attempt(self, before: JobRecord, change: AgentLost | TimedOut, reason: str) -> None:
        with structlog.contextvars.bound_contextvars(job_id=before.id):
            result = await self.change(before.id, change)
            if result is None or not result.applied:
                return
            after = result.record
            log.info("attempt ended", change=change.change_id, status=after.status.value,
                     reason=after.history[-1].reason)
            if after.status != before.status:  # retried, failed or stopping: stop what still runs
                await self.commands.cancel(before.id, before.attempt, agents_to_cancel(before), reason)
