"""job-intake's part of the audit trail: its audited verbs, wrapped so that each answer (done or
refused, for a bad request or a missing role) is recorded under the caller's actor
(``cluster-admin`` or ``user/<name>``), and ``tm.audit.list``, which reads the stream back (a
person: only the projects it administers)."""

from __future__ import annotations

import collections
import datetime
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from faststream.nats import NatsBroker, NatsMessage
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.job_intake.policy import audit_scope
from services.job_intake.replies import Refused
from trainmaster import audit
from trainmaster.access import Denied
from trainmaster.bus import MSG_ID, Responder
from trainmaster.decoding import RequestError, decode_as
from trainmaster.identity import Directory
from trainmaster.jobstore import JobStore
from trainmaster.messages import AuditEntry, AuditList, AuditListRequest, encode
from trainmaster.topology import Topology

# (request body, reply body or None when refused) -> (project, target, detail)
Describe = Callable[[dict[str, Any], dict[str, Any] | None], Awaitable[tuple[str, str, dict[str, Any]]]]

_decode_entry = msgspec.json.Decoder(AuditEntry).decode
FETCH_BATCH = 256


def _refusal_reason(exc: RequestError | Refused | Denied) -> str:
    if isinstance(exc, Refused):
        return audit.refusal_of(exc.reply) or "refused"
    return exc.body.message if isinstance(exc, RequestError) else exc.message


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, kw_only=True)
class AuditTrail:
    broker: NatsBroker
    js: JetStreamContext
    topo: Topology
    store: JobStore
    directory: Directory
    max_bytes: int

    def actor_of(self, headers: Mapping[str, str] | None) -> str:
        """The caller as its record names it; a key no user holds (or a revoked one): as the bus names it."""
        try:
            return self.directory.caller(headers).actor
        except Denied:
            return audit.actor_of(headers)

    def audited(self, action: str, handle: Responder, describe: Describe) -> Responder:
        """``handle``, recording its outcome.  The entry's id is the job's (a job's create) or the
        request's ``Nats-Msg-Id``, so a retried request is one entry."""

        async def audited_handle(msg: NatsMessage) -> bytes:
            body, actor = audit.loose_body(msg.body), self.actor_of(msg.headers)
            key = (msg.headers or {}).get(MSG_ID) or msg.correlation_id
            try:
                reply = await handle(msg)
            except (RequestError, Refused, Denied) as exc:
                reason = _refusal_reason(exc)
                project, target, detail = await describe(body, None)
                await audit.record(self.broker, self.topo, audit.entry(
                    actor, action, project, target, reason=reason, detail=detail), key)
                raise
            answer = audit.loose_body(reply)
            project, target, detail = await describe(body, answer)
            await audit.record(self.broker, self.topo, audit.entry(actor, action, project, target, detail=detail),
                               key if action != "job_create" or not target else target)
            return reply

        return audited_handle

    # ---- how each audited verb names what it did
    async def job_project(self, job_id: str) -> str:
        record = await self.store.find(job_id) if job_id else None
        return record.spec.account if record is not None else audit.CLUSTER

    async def describe_create(self, body: dict[str, Any], reply: dict[str, Any] | None) -> tuple[str, str, dict]:
        # a job the validator failed is still created: its reply is an error that carries the job
        job = (reply or {}).get("job") or reply or {}
        job_id = _text(job.get("id"))
        if job_id:
            detail = {"name": job.get("name"), "version": job.get("version"), "status": job.get("status")}
            return await self.job_project(job_id), job_id, detail
        return audit.project_of(body.get("account", "default")), _text(body.get("name")), {}

    async def describe_stop(self, body: dict[str, Any], reply: dict[str, Any] | None) -> tuple[str, str, dict]:
        job_id = _text(body.get("id"))
        return await self.job_project(job_id), job_id, {"reason": body.get("reason")} if body.get("reason") else {}

    @staticmethod
    def describe_account(*fields: str) -> Describe:
        async def describe(body: dict[str, Any], reply: dict[str, Any] | None) -> tuple[str, str, dict]:
            name = _text(body.get("name"))
            return audit.project_of(name), name, {f: body[f] for f in fields if f in body}

        return describe

    @staticmethod
    async def describe_dataset_create(body: dict[str, Any], reply: dict[str, Any] | None) -> tuple[str, str, dict]:
        return audit.project_of(body.get("project", "default")), _text(body.get("name")), {}

    @staticmethod
    def describe_dataset(project_of: Callable[[str], Awaitable[str | None]]) -> Describe:
        """An entry of the dataset's project (``@cluster`` for a dataset that is not there)."""
        async def describe(body: dict[str, Any], reply: dict[str, Any] | None) -> tuple[str, str, dict]:
            name = _text(body.get("name"))
            detail = {"version": reply["version"]} if reply and isinstance(reply.get("version"), str) else {}
            return audit.project_of(await project_of(name)), name, detail

        return describe

    @staticmethod
    async def describe_named(body: dict[str, Any], reply: dict[str, Any] | None) -> tuple[str, str, dict]:
        detail = {"version": reply["version"]} if reply and isinstance(reply.get("version"), str) else {}
        return audit.CLUSTER, _text(body.get("name")), detail

    # ---- tm.audit.list
    async def on_list(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        query = decode_as(msg.body if msg.body.strip() else b"{}", AuditListRequest, self.max_bytes)
        projects = audit_scope(caller, query.project)
        entries = await self.read(query, projects) if projects is None or projects else []
        return encode(AuditList(entries=entries))

    async def read(self, query: AuditListRequest, projects: frozenset[str] | None = None) -> list[AuditEntry]:
        """The newest ``query.limit`` entries (of ``projects``: None for every one), oldest first,
        through a short-lived ordered read of the stream filtered to the project (the whole trail
        without one)."""
        subject = self.topo.audit(query.project or "*", "*")
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True,
            deliver_policy=DeliverPolicy.BY_START_TIME if query.since else DeliverPolicy.ALL,
            opt_start_time=_rfc3339(query.since) if query.since else None,
        )
        sub = await self.js.pull_subscribe(subject, stream=self.topo.stream_audit.name, config=config)
        newest: collections.deque[AuditEntry] = collections.deque(maxlen=query.limit)
        try:
            if (await sub.consumer_info()).num_pending == 0:
                return []
            while True:
                msgs = await sub.fetch(FETCH_BATCH, timeout=5.0)
                for m in msgs:
                    item = _decode_entry(m.data)
                    if projects is None or item.project in projects:
                        newest.append(item)
                if msgs[-1].metadata.num_pending == 0:
                    return list(newest)
        finally:
            await sub.unsubscribe()


def _rfc3339(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
