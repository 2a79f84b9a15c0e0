"""What the scheduler sends to agents: assignments of a placed attempt and cancellations.

Published with the plain JetStream client, many in flight at once: a placement pass assigns
hundreds of nodes, and one awaited publish at a time through the broker tops out at a few
thousand per second on this kind of machine.  Assignments go out with ``publish_async`` and their
acks are awaited together (``settle``): a job whose Assign was not acknowledged is handed back to
be sent again, so a bus hiccup never leaves a Scheduled job unassigned.

Each message carries a ``Nats-Msg-Id``, so a re-send (a retried commit, a new leader re-sending the
assignments of Scheduled jobs) is dropped by the server within the duplicate window; agents are
idempotent on (job, attempt, node) beyond it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from opentelemetry import propagate
from opentelemetry.trace import get_current_span

from trainmaster.bus import MSG_ID
from trainmaster.messages import Assign, Cancel, JobRecord, encode
from trainmaster.pubacks import PubAcks
from trainmaster.service import ServiceContext


class AgentCommands:
    def __init__(self, ctx: ServiceContext, pipe: PubAcks | None = None) -> None:
        """``pipe``: assignments go out through it (``trainmaster.pubacks``) rather than ``publish_async``."""
        self.ctx = ctx
        self.pipe = pipe
        self.topo = ctx.topo
        self.timeout_s = ctx.settings.bus.publish_timeout_s
        self._in_flight: list[tuple[str, asyncio.Future]] = []

    async def _publish(self, agent_id: str, body: bytes, msg_id: str) -> None:
        headers = {MSG_ID: msg_id}
        if get_current_span().get_span_context().is_valid:
            propagate.inject(headers)  # the agent's work joins the job's trace
        await self.ctx.js.publish(self.topo.agent_control(agent_id), body, timeout=self.timeout_s,
                                  stream=self.topo.stream_agent.name, headers=headers)

    async def assign(self, record: JobRecord) -> None:
        """One ``Assign`` per node of the record's attempt; their acks are awaited by ``settle``."""
        node_count = record.spec.resources.node_count
        agents = [p.agent_id for p in sorted(record.placements, key=lambda p: p.node)]
        for p in record.placements:
            body = encode(Assign(job_id=record.id, attempt=record.attempt, node=p.node, node_count=node_count,
                                 spec=record.spec, name=record.name, version=record.version, agents=agents))
            headers = {MSG_ID: f"{record.id}.{record.attempt}.{p.node}.assign"}
            if get_current_span().get_span_context().is_valid:
                propagate.inject(headers)
            if self.pipe is not None:
                future = await self.pipe.publish(self.topo.agent_control(p.agent_id), body, headers=headers,
                                                 stream=self.topo.stream_agent.name)
            else:
                future = await self.ctx.js.publish_async(self.topo.agent_control(p.agent_id), body,
                                                         stream=self.topo.stream_agent.name, headers=headers)
            self._in_flight.append((record.id, future))

    async def settle(self) -> set[str]:
        """Wait for the acks of the assignments sent since the last call; the ids of the jobs with
        an assignment that was not acknowledged (to be sent again)."""
        in_flight, self._in_flight = self._in_flight, []
        if not in_flight:
            return set()
        try:
            results = await asyncio.wait_for(asyncio.gather(*(f for _, f in in_flight), return_exceptions=True),
                                             self.timeout_s * 2)
        except TimeoutError:
            return {job_id for job_id, _ in in_flight}
        return {job_id for (job_id, _), result in zip(in_flight, results, strict=True)
                if isinstance(result, BaseException)}

    async def cancel(self, job_id: str, attempt: int, agents: Iterable[str], reason: str) -> None:
        """``Cancel`` the nodes of ``attempt`` (and earlier ones) on each of ``agents``."""
        body = encode(Cancel(job_id=job_id, reason=reason, attempt=attempt))
        # the id names the agent: the server dedupes ids per stream, not per subject
        await asyncio.gather(*(self._publish(agent_id, body, f"{job_id}.{attempt}.{agent_id}.cancel")
                               for agent_id in agents))
