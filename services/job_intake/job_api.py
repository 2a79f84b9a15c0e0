"""The read/command API over stored jobs: ``tm.jobs.get``, ``tm.jobs.list`` (from the in-memory
index) and ``tm.jobs.stop`` (through the state machine, then a ``Cancel`` to each agent running
the job).  A job of a project the caller does not view is answered as missing; stopping takes
member of its project."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from faststream.nats import NatsBroker, NatsMessage

from services.job_intake.index import JobIndex
from services.job_intake.policy import visible
from services.job_intake.replies import Refused, refused
from trainmaster.access import Caller, Role, require
from trainmaster.bus import publish_js
from trainmaster.decoding import decode_as
from trainmaster.identity import Directory
from trainmaster.jobstore import JobStore
from trainmaster.messages import (
    Cancel,
    GetRequest,
    JobRecord,
    ListReply,
    ListRequest,
    Status,
    StopRequest,
    StopRequested,
    Violation,
    encode,
    summary_of,
)
from trainmaster.statemachine import IllegalTransition
from trainmaster.topology import Topology

log = structlog.get_logger()


def _no_job(job_id: str) -> Refused:
    return refused("not_found", f"no job with id {job_id!r}",
                   [Violation("id", "not_found", "check the id with `trainmaster job list`")])


@dataclass(frozen=True, kw_only=True)
class JobApi:
    broker: NatsBroker
    topo: Topology
    store: JobStore
    index: JobIndex
    directory: Directory
    max_bytes: int

    async def visible_job(self, caller: Caller, job_id: str) -> JobRecord:
        """The job, if the caller views its project; else the reply to a job that is not there."""
        record = await self.store.find(job_id)
        if record is None or not visible(caller, record.spec.account):
            raise _no_job(job_id)
        return record

    async def on_get(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        query = decode_as(msg.body, GetRequest, self.max_bytes)
        return encode(await self.visible_job(caller, query.id))

    async def on_list(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        query = decode_as(msg.body if msg.body.strip() else b"{}", ListRequest, self.max_bytes)
        jobs, total = self.index.select(query, caller.projects(Role.VIEWER))
        return encode(ListReply(jobs=jobs, total=total))

    async def on_stop(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        query = decode_as(msg.body, StopRequest, self.max_bytes)
        job = await self.visible_job(caller, query.id)
        require(caller, job.spec.account, Role.MEMBER, "stopping a job", "id")
        with structlog.contextvars.bound_contextvars(job_id=query.id):
            try:
                result = await self.store.apply(query.id, StopRequested(change_id="stop", reason=query.reason))
            except IllegalTransition as exc:
                raise refused("conflict", str(exc)) from exc
            record = result.record
            if record.status == Status.STOPPING:
                await self.cancel_nodes(record, query.reason)
            log.info("stop requested", status=record.status.value)
        return encode(summary_of(record))

    async def cancel_nodes(self, record: JobRecord, reason: str) -> None:
        for agent_id in sorted({p.agent_id for p in record.placements}):
            # the id names the agent: the server dedupes ids per stream, so one id for every agent
            # would reach only the first
            await publish_js(self.broker, self.topo.agent_control(agent_id),
                             encode(Cancel(job_id=record.id, reason=reason, attempt=record.attempt)),
                             stream=self.topo.stream_agent.name,
                             msg_id=f"{record.id}.{record.attempt}.{agent_id}.cancel")
