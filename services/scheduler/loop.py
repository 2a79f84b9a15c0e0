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
from services.scheduler.wakeup import Wake, Wakeups, blocked_after, pass_due
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
from trainmaster.pubacks import PubAcks
from trainmaster.service import ServiceContext
from trainmaster.statemachine import IllegalTransition

log = structlog.get_logger()

TICK_S = 2.0  # the loop runs at least this often (lost agents, timeouts, queued jobs)
# no pause between passes: a pass runs as soon as something may fit (``wakeup.py``), and the
# wake-ups that come during a pass (its commit awaits the bus) make one next pass.  Lost agents
# are looked for at most this often between ticks (a look is a walk over every agent)
RECONCILE_EVERY_S = 0.25
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
    def __init__(self, ctx: ServiceContext, store: JobStore, lease: LeaderLease | None = None,
                 pipe: PubAcks | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.topo = ctx.topo
        self.store = store
        self.lease = lease
        self.commands = AgentCommands(ctx, pipe)
        catalog = load_resources(self.settings.catalog.catalog_dir)
        self.view = SchedulerView(ShapeCatalog(catalog), self.settings.scheduler.agent_timeout_s,
                                  started_at=time.time())
        self.feed = ViewFeed(ctx, store, self.view, self.wake)
        self.wakeups = Wakeups()
        self.blocked = False  # the last pass left only jobs that do not fit the view as it stands
        self.reservations: dict[str, list[str]] = {}
        self.unsent: set[str] = set()  # Scheduled jobs whose assignments must be sent (again)
        self.leading = False
        self.tracing = self.settings.observability.otel_exporter != "none"
        self._reconciled_at = time.time()
        self._explained_at = 0.0
        self._wake = asyncio.Event()

    def wake(self, reason: Wake | bool | None = Wake.LEADERSHIP) -> None:
        """Note why a pass may be due (``wakeup.py``); a change of leadership calls it with a bool."""
        if reason is None:
            return
        if self.wakeups.note(reason if isinstance(reason, Wake) else Wake.LEADERSHIP):
            self._wake.set()

    def remember(self, record: JobRecord, revision: int) -> None:
        self.feed.remember(record, revision)

    # ------------------------------------------------------------------ the loop (leader only)
    async def run(self) -> None:
        tick_at = time.monotonic() + TICK_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(tick_at - time.monotonic(), 0.0))
            self._wake.clear()
            if time.monotonic() >= tick_at:
                self.wakeups.note(Wake.TICK)
                tick_at = time.monotonic() + TICK_S
            reasons = self.wakeups.take()
            if self.lease is not None and not self.lease.is_leader():
                self.leading = False
                continue
            if self.leading and not pass_due(reasons, self.blocked) and not self.unsent:
                continue  # nothing that came can let a job of the blocked queue fit
            try:
                if not self.leading:
                    await self.take_office()
                now = time.time()
                if self.unsent:
                    await self.send_unsent()
                if Wake.TICK in reasons or now - self._reconciled_at >= RECONCILE_EVERY_S:
                    await self.reconcile(now)
                await self.schedule_pass(now)
            except Exception:  # one bad pass must not end the scheduler: log, then try again
                log.exception("scheduling pass failed")
                self.blocked = False
                await asyncio.sleep(1.0)
                self.wake(Wake.TICK)

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
        the batch size (more may fit: the loop goes on at once)."""
        if not self.view.queued:
            self.reservations = {}
            self.blocked = False
            return 0, False
        settings = PassSettings(
            strategy=self.settings.scheduler.scheduler_strategy,
            reserve_after_s=self.settings.scheduler.scheduler_reserve_after_s,
            max_placements=self.settings.scheduler.scheduler_batch,
            judge_impossible=now - self.view.started_at >= self.settings.scheduler.agent_timeout_s,
            max_reasons=EXPLAIN_BATCH if now - self._explained_at >= EXPLAIN_EVERY_S else 0,
        )
        cluster = self.view.cluster(now)
        usage = self.view.usage_shares(cluster.totals)
        self.view.capacity.begin()
        try:  # planned on the kept index: what the pass takes comes back as its records are taken in
            result = plan_pass(self.view.fair_queue(usage), cluster, usage, now, settings, self.reservations,
                               quotas=self.view.quotas, held=self.view.account_use)
        finally:
            self.view.capacity.rollback()
        self._note_reservations(result)
        if result.waiting:
            self._explained_at = now
        if not self._may_commit():
            self.blocked = False
            return 0, False
        failed = await self.commit(result)
        self.blocked = blocked_after(len(self.view.queued), result.more, failed)
        if result.more:
            self.wake(Wake.MORE)  # capped by the batch size: go on at once
        return len(result.placed), result.more

    def _note_reservations(self, result: PassResult) -> None:
        for job_id, agents in result.reservations.items():
            if job_id not in self.reservations:
                log.info("agents held back for a blocked job", job_id=job_id, agents=len(agents))
        self.reservations = result.reservations

    async def commit(self, result: PassResult) -> int:
        """Write the pass's decisions; how many placements were not written (tried again)."""
        gate = asyncio.Semaphore(self.settings.scheduler.scheduler_commit_concurrency)
        failed = 0

        async def place(job: QueuedJob, agents: list[str]) -> None:
            nonlocal failed
            async with gate:
                if not await self.place(job, agents):
                    failed += 1

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
        return failed

    async def place(self, job: QueuedJob, agents: list[str]) -> bool:
        """Write one placement and send its assignments; False when it was not written and the
        job may still be Pending (to be tried again)."""
        record = self.view.records.get(job.job_id)
        if record is None or record.status != Status.PENDING:
            return True
        if self.lease is not None and not self.lease.is_leader():
            return False  # the lease ran out during the batch: the next leader decides
        placements = [Placement(node=i, agent_id=a, host=self.view.agents[a].host) for i, a in enumerate(agents)]
        attempt = record.attempt + 1
        change = Placed(change_id=f"placed.{attempt}", attempt=attempt, placements=placements)
        # job_id named in each line rather than bound to the context: binding it cost a placement
        # a share of the scheduler's CPU at thousands a second (docs/benchmarks.md)
        with job_trace(record, "place job", self.tracing):
            result = await self.change(record.id, change)
            if result is None:
                # a write that timed out may still have landed: then its Assign is due all the same
                # (send_unsent sends it once the stored record says Scheduled, and drops it if not)
                self.unsent.add(record.id)
                return False
            if result.applied:
                log.info("job placed", job_id=record.id, agents=sorted(set(agents)), nodes=len(agents),
                         attempt=attempt)
                try:
                    await self.commands.assign(result.record)
                except Exception as exc:  # sent again next pass
                    log.warning("assignment not sent", job_id=record.id, error=f"{type(exc).__name__}: {exc}")
                    self.unsent.add(record.id)
        return True

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
            self.view.mark_lost(agent_id)
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
