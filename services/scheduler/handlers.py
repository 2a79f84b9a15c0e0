"""The scheduler's handlers of what comes from agents and job-intake: a node's report (turned into
a job-state change, once ``trust`` believes it), a heartbeat (the agent registry), a work item (a
nudge to place a new job) and the agents list.  Every replica serves them, leader or not."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import structlog
from faststream.nats import NatsMessage
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from services.scheduler.commands import AgentCommands
from services.scheduler.reconcile import agents_to_cancel
from services.scheduler.trust import Verdict, heartbeat_refusal, judge_report, sender_refusal
from services.scheduler.view import HOLDS_CAPACITY, SchedulerView
from services.scheduler.wakeup import Wake
from trainmaster import audit
from trainmaster.access import Denied
from trainmaster.bus import UNDECODABLE, Poison, denied_reply, error_reply
from trainmaster.decoding import RequestError, decode_empty
from trainmaster.identity import Directory
from trainmaster.jobstore import JobNotFound, JobStore
from trainmaster.messages import (
    AgentHeartbeat,
    AgentList,
    AnyChange,
    JobRecord,
    NodeExited,
    NodeReport,
    NodeRunning,
    Status,
    WorkItem,
    encode,
)
from trainmaster.service import ServiceContext
from trainmaster.statemachine import IllegalTransition

log = structlog.get_logger()
_decode_heartbeat = msgspec.json.Decoder(AgentHeartbeat).decode
_decode_report = msgspec.json.Decoder(NodeReport).decode
_decode_work = msgspec.json.Decoder(WorkItem).decode


class Handlers:
    """``remember`` takes a record written or read into the view; ``wake`` starts the loop's next
    pass at once."""

    def __init__(self, ctx: ServiceContext, store: JobStore, view: SchedulerView, commands: AgentCommands,
                 remember: Callable[[JobRecord, int], None], wake: Callable[[Wake], None],
                 directory: Directory) -> None:
        self.settings = ctx.settings
        self.topo = ctx.topo
        self.broker = ctx.broker
        self.store = store
        self.view = view
        self.commands = commands
        self.remember = remember
        self.wake = wake
        self.directory = directory

    async def on_work(self, msg: Msg) -> None:
        try:
            item = _decode_work(msg.data)
        except UNDECODABLE as exc:
            raise Poison(str(exc)) from exc
        # a nudge: the watch usually brought the job already, and its arrival woke the loop then
        # (waking it again would re-walk a blocked queue for nothing new: wakeup.py)
        if item.job_id not in self.view.records:
            try:
                self.remember(*await self.store.get(item.job_id))  # wakes the loop if it is Pending
            except JobNotFound:
                log.warning("work item for an unknown job", job_id=item.job_id)
                return

    async def on_report(self, msg: Msg) -> None:
        try:
            report = _decode_report(msg.data)
        except UNDECODABLE as exc:
            raise Poison(str(exc)) from exc
        if (why := sender_refusal(self.topo, msg.subject, report)) is not None:
            # acknowledged, not retried: a redelivery would not make it true
            log.warning("report refused", job_id=report.job_id, agent_id=report.agent_id, why=why)
            await self._audit_refusal(msg, "agent_report", report.job_id, why, _stream_seq(msg))
            return
        tag = f"a{report.attempt}.n{report.node}"
        change: AnyChange
        if report.state == "running":
            change = NodeRunning(change_id=f"{tag}.running", attempt=report.attempt, node=report.node)
        else:
            change = NodeExited(change_id=f"{tag}.exited", attempt=report.attempt, node=report.node,
                                exit_code=report.exit_code if report.exit_code is not None else -1,
                                reason=report.reason)
        with structlog.contextvars.bound_contextvars(job_id=report.job_id, agent_id=report.agent_id):
            known = self.view.records.get(report.job_id)
            if known is not None and known.attempt == report.attempt and known.status in HOLDS_CAPACITY:
                # a first guess (checked by the compare-and-set): within one attempt its nodes and
                # agents are those of the stored record, which is all ``before`` is used for
                before, revision = known, self.view.revisions[report.job_id]
            else:
                try:
                    before, revision = await self.store.get(report.job_id)
                except (JobNotFound, ValueError) as exc:
                    log.warning("report for an unknown job", error=str(exc))
                    return
            judgement = judge_report(self.topo, msg.subject, report, before)
            if judgement.verdict is Verdict.REFUSE:
                log.warning("report refused", why=judgement.reason)
                await self._audit_refusal(msg, "agent_report", report.job_id, judgement.reason or "refused",
                                          _stream_seq(msg))
                return
            # a stale one goes on: the state machine fences attempts (and says so in its log)
            try:
                result = await self.store.apply(report.job_id, change, known=(before, revision))
            except IllegalTransition as exc:
                log.warning("report refused", why=str(exc))
                return
            self.remember(result.record, result.revision)
            if not result.applied:
                return
            after = result.record
            log.info("node report applied", node=report.node, state=report.state, exit_code=report.exit_code,
                     status=after.status.value)
            if after.status in (Status.FAILED, Status.PENDING) and before.status != after.status:
                # failed, or sent back to be retried: the other nodes of the attempt must stop
                why = f"node {report.node} failed" if after.status == Status.FAILED else after.history[-1].reason
                await self.commands.cancel(after.id, report.attempt,
                                           agents_to_cancel(before, except_node=report.node), why or "retrying")

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            hb = _decode_heartbeat(msg.data)
        except UNDECODABLE as exc:
            log.warning("bad heartbeat ignored", error=str(exc))
            return
        if (why := heartbeat_refusal(self.topo, msg.subject, hb)) is not None:
            log.warning("heartbeat refused", agent_id=hb.agent_id, why=why)
            # heartbeats repeat every few seconds: one entry a minute per impostor and claim
            minute = int(time.time() // 60)
            await self._audit_refusal(msg, "agent_heartbeat", hb.agent_id, why, f"{hb.agent_id}:{minute}")
            return
        news = self.view.heard(hb, time.time())
        if news is not None:
            log.info(f"agent {news}", agent_id=hb.agent_id, pool=hb.pool, cpus=hb.cpus, memory_mb=hb.memory_mb,
                     gpus=len(hb.gpus))
            self.wake(Wake.AGENT_JOINED)

    async def _audit_refusal(self, msg: Msg, action: str, target: str, why: str, key: str) -> None:
        """A refused attempt on the audit trail: the sender is the agent its subject names (only
        that agent may publish there)."""
        sender = msg.subject.rsplit(".", 1)[-1]
        entry = audit.entry(f"agent/{sender}", action, audit.CLUSTER, target, reason=why)
        await audit.record(self.broker, self.topo, entry, f"{msg.subject}:{key}")

    async def on_agents_list(self, msg: NatsMessage) -> bytes:
        """Every agent and the lost ones, to anyone known (unknown or revoked credentials: ``unauthorized``)."""
        try:
            self.directory.caller(msg.headers)
        except Denied as refusal:
            return denied_reply(refusal)
        try:
            decode_empty(msg.body, self.settings.api.max_request_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        agents = sorted(self.view.heartbeats.values(), key=lambda hb: hb.agent_id)
        return encode(AgentList(agents=agents, lost=sorted(self.view.lost)))



def _stream_seq(msg: Msg) -> str:
    """A report's place in its stream: a redelivered report is one audit entry."""
    try:
        return str(msg.metadata.sequence.stream)
    except NotJSMessageError:  # a plain publish (tests)
        return f"{time.time():.3f}"
