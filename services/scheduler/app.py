"""scheduler: the agent registry (from heartbeats), placement of pending jobs, assignments to
agents, and the job-state changes that come from agents' reports."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import msgspec
import structlog
from faststream.nats import NatsMessage
from nats.aio.msg import Msg
from opentelemetry import propagate, trace

from services.scheduler.placement import HOLDS_CAPACITY, AgentView, Snapshot, place, used_by
from trainmaster.bus import UNDECODABLE, Poison, durable_subscriber, publish_js, responder
from trainmaster.jobstore import JobStore
from trainmaster.messages import (
    AgentHeartbeat,
    AgentList,
    Assign,
    Cancel,
    JobRecord,
    NodeExited,
    NodeReport,
    NodeRunning,
    Placed,
    Status,
    WorkItem,
    encode,
)
from trainmaster.service import ServiceContext
from trainmaster.statemachine import IllegalTransition

log = structlog.get_logger()
_decode_record = msgspec.json.Decoder(JobRecord).decode
_decode_heartbeat = msgspec.json.Decoder(AgentHeartbeat).decode
_decode_report = msgspec.json.Decoder(NodeReport).decode
_decode_work = msgspec.json.Decoder(WorkItem).decode

ACTIVE = frozenset({Status.PENDING}) | HOLDS_CAPACITY
TICK_S = 2.0
_tracer = trace.get_tracer("trainmaster.scheduler")


@contextlib.contextmanager
def job_trace(record: JobRecord, name: str) -> Iterator[None]:
    """A span in the job's own trace (job-intake records the request's ``traceparent``): the
    placement loop runs outside any message's span, so without this the Assign, and all the agent
    does with it, would start a trace of their own."""
    parent = propagate.extract({"traceparent": record.traceparent}) if record.traceparent else None
    with _tracer.start_as_current_span(name, context=parent, attributes={"job_id": record.id}):
        yield


class Scheduler:
    def __init__(self, ctx: ServiceContext, store: JobStore) -> None:
        self.ctx = ctx
        self.topo = ctx.topo
        self.store = store
        self.agents: dict[str, tuple[AgentHeartbeat, float]] = {}
        self.active: dict[str, JobRecord] = {}  # pending and placed jobs, from the KV watch
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ views
    def remember(self, record: JobRecord) -> None:
        previous = self.active.get(record.id)
        if previous is not None and len(previous.history) > len(record.history):
            return  # an older version than the one we hold
        if record.status in ACTIVE:
            self.active[record.id] = record
        else:
            self.active.pop(record.id, None)
        if previous is None or previous.status != record.status:
            self._wake.set()  # a job became pending or released capacity

    def snapshot(self) -> Snapshot:
        agents = {a: AgentView.of(hb, seen) for a, (hb, seen) in self.agents.items()}
        return Snapshot(agents, used_by(self.active.values()), time.time(), self.ctx.settings.agent_timeout_s)

    async def load(self) -> None:
        """Every active record, then keep following changes (the watch is the queue's memory)."""
        watcher = await self.store.kv.watchall(include_history=False)  # type: ignore[union-attr]
        async for entry in watcher:
            if entry is None:
                break
            if entry.value:
                self.remember(_decode_record(entry.value))
        for record in list(self.active.values()):
            if record.status == Status.SCHEDULED:
                with job_trace(record, "resend assignments"):
                    await self.send_assignments(record)  # a crash may have cut them short
        self.ctx.background(self._follow(watcher), "jobs-watch")

    async def _follow(self, watcher) -> None:
        async for entry in watcher:
            if entry is not None and entry.value:
                self.remember(_decode_record(entry.value))

    # ------------------------------------------------------------------ placement loop
    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.schedule_pass()

    async def schedule_pass(self) -> None:
        pending = sorted((r for r in self.active.values() if r.status == Status.PENDING),
                         key=lambda r: (r.created_at, r.id))
        for record in pending:
            plan = place(self.snapshot(), record.spec.resources)
            if plan is None:
                continue
            with structlog.contextvars.bound_contextvars(job_id=record.id), job_trace(record, "place job"):
                try:
                    result = await self.store.apply(
                        record.id, Placed(change_id=f"placed.{record.attempt + 1}", attempt=record.attempt + 1,
                                          placements=plan))
                except IllegalTransition as exc:
                    log.info("job moved on before placement", why=str(exc))
                    self.remember((await self.store.get(record.id))[0])
                    continue
                self.remember(result.record)
                if result.applied:
                    log.info("job placed", agents=[p.agent_id for p in plan], attempt=result.record.attempt)
                    await self.send_assignments(result.record)

    async def send_assignments(self, record: JobRecord) -> None:
        for p in record.placements:
            command = Assign(job_id=record.id, attempt=record.attempt, node=p.node,
                             node_count=record.spec.resources.node_count, spec=record.spec,
                             name=record.name, version=record.version)
            await publish_js(self.ctx.broker, self.topo.agent_control(p.agent_id), encode(command),
                             stream=self.topo.stream_agent.name,
                             msg_id=f"{record.id}.{record.attempt}.{p.node}.assign")

    # ------------------------------------------------------------------ handlers
    async def on_work(self, msg: NatsMessage) -> None:
        try:
            item = _decode_work(msg.body)
        except UNDECODABLE as exc:
            raise Poison(str(exc)) from exc
        record = await self.store.find(item.job_id)
        if record is None:
            log.warning("work item for an unknown job", job_id=item.job_id)
            return
        self.remember(record)
        self._wake.set()

    async def on_report(self, msg: NatsMessage) -> None:
        try:
            report = _decode_report(msg.body)
        except UNDECODABLE as exc:
            raise Poison(str(exc)) from exc
        tag = f"a{report.attempt}.n{report.node}"
        if report.state == "running":
            change = NodeRunning(change_id=f"{tag}.running", attempt=report.attempt, node=report.node)
        else:
            change = NodeExited(change_id=f"{tag}.exited", attempt=report.attempt, node=report.node,
                                exit_code=report.exit_code if report.exit_code is not None else -1,
                                reason=report.reason)
        with structlog.contextvars.bound_contextvars(job_id=report.job_id, agent_id=report.agent_id):
            if await self.store.find(report.job_id) is None:
                log.warning("report for an unknown job")
                return
            try:
                result = await self.store.apply(report.job_id, change)
            except IllegalTransition as exc:
                log.warning("report refused", why=str(exc))
                return
            self.remember(result.record)
            if result.applied:
                log.info("node report applied", node=report.node, state=report.state,
                         exit_code=report.exit_code, status=result.record.status.value)
            if result.record.status == Status.FAILED and result.applied:
                await self.cancel_other_nodes(result.record, f"node {report.node} failed")

    async def cancel_other_nodes(self, record: JobRecord, reason: str) -> None:
        running = {n.agent_id for n in record.nodes if n.state != "exited"}
        for agent_id in sorted(running):
            await publish_js(self.ctx.broker, self.topo.agent_control(agent_id),
                             encode(Cancel(job_id=record.id, reason=reason)),
                             stream=self.topo.stream_agent.name, msg_id=f"{record.id}.{record.attempt}.cancel")

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            hb = _decode_heartbeat(msg.data)
        except UNDECODABLE as exc:
            log.warning("bad heartbeat ignored", error=str(exc))
            return
        known = self.agents.get(hb.agent_id)
        self.agents[hb.agent_id] = (hb, time.time())
        if known is None or time.time() - known[1] > self.ctx.settings.agent_timeout_s:
            log.info("agent registered", agent_id=hb.agent_id, pool=hb.pool, cpus=hb.cpus, gpus=len(hb.gpus))
            self._wake.set()

    async def on_agents_list(self, msg: NatsMessage) -> bytes:
        return encode(AgentList(agents=[hb for hb, _ in sorted(self.agents.values(), key=lambda a: a[0].agent_id)]))


async def setup(ctx: ServiceContext) -> None:
    topo = ctx.topo
    store = await JobStore(ctx.broker, topo, source="scheduler").open()
    scheduler = Scheduler(ctx, store)

    # plain nats-py, not a faststream subscriber: a heartbeat is no part of any job's trace
    await ctx.broker.connection.subscribe(topo.agent_heartbeat("*"), cb=scheduler.on_heartbeat)

    durable_subscriber(ctx.broker, topo, topo.consumer_scheduler_queue, scheduler.on_work)
    durable_subscriber(ctx.broker, topo, topo.consumer_scheduler_status, scheduler.on_report)
    responder(ctx.broker, topo.agents_list, "scheduler", scheduler.on_agents_list)
    await scheduler.load()
    ctx.background(scheduler.run(), "placement-loop")
