"""Accepting a job, from ``tm.jobs.create`` (request/reply), or one of ``tm.jobs.submit`` (durable,
fire and forget; submissions.py accepts those a batch at a time) whose request id was claimed
before: read and normalise the request, claim its request id, take a job id and the name's next
version, store the record, save it as a template when asked, hand it to the validator."""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec
import structlog
from faststream.nats import NatsBroker, NatsMessage
from nats.js.kv import KeyValue

from services.job_intake.core import (
    RequestClaim,
    claim_key,
    claim_request,
    claim_version,
    format_version,
    new_job_id,
    read_job_request,
)
from services.job_intake.index import JobIndex
from services.job_intake.policy import require_job_account, require_save_as
from services.job_intake.registry import Templates
from services.job_intake.replies import request_id_of
from services.job_intake.verdict import await_verdict, verdict_reply
from services.job_intake.versions import VersionCounter
from trainmaster import audit, kvstore
from trainmaster.access import Caller
from trainmaster.bus import publish_js
from trainmaster.identity import Directory
from trainmaster.jobstore import JobStore
from trainmaster.messages import (
    JobRecord,
    JobRequest,
    WorkItem,
    encode,
)
from trainmaster.settings import Settings
from trainmaster.statemachine import new_record
from trainmaster.telemetry import current_traceparent
from trainmaster.topology import Topology

log = structlog.get_logger()
_decode_claim = msgspec.json.Decoder(RequestClaim).decode


@dataclass(frozen=True, kw_only=True)
class Intake:
    broker: NatsBroker
    topo: Topology
    settings: Settings
    store: JobStore
    requests: KeyValue  # request claims
    versions: VersionCounter
    index: JobIndex
    templates: Templates  # for save_as
    directory: Directory

    async def authorise(self, caller: Caller, spec: JobRequest) -> None:
        """Refuse a job the caller may not create, before anything is claimed or stored."""
        require_job_account(caller, spec.account)
        if spec.save_as is not None:
            found = await self.templates.find(spec.save_as.name)
            require_save_as(caller, spec.save_as.name, found.value.spec.account if found is not None else None)

    async def accept(self, spec: JobRequest, request_id: str, claimant: str | None = None) -> JobRecord:
        """Idempotent on ``request_id`` (per ``claimant``, a person's actor; None: the cluster
        admin): a retried request returns the job created the first time."""
        assert spec.name is not None
        key = claim_key(request_id, claimant)
        job_id = new_job_id(time.time())
        claimed = await kvstore.change(self.requests, key, lambda current: claim_request(current, job_id),
                                       decode=_decode_claim)
        claim = claimed.value
        assert claim is not None  # claim_request writes one where there is none
        existing = await self.store.find(claim.job_id)
        if existing is not None:
            return existing
        if claim.version is None:
            version = format_version(await self.versions.take(spec.name))
            first = claim
            versioned = await kvstore.change(self.requests, key,
                                             lambda current: claim_version(current, first, version),
                                             decode=_decode_claim, known=kvstore.Stored(first, claimed.revision))
            claim = versioned.value
        assert claim is not None and claim.version is not None
        record = new_record(
            job_id=claim.job_id, name=spec.name, version=claim.version, spec=spec,
            request_id=request_id, now=time.time(), traceparent=current_traceparent(),
        )
        with structlog.contextvars.bound_contextvars(job_id=record.id):
            record = await self.store.create(record)
            self.index.put(record)
            if spec.save_as is not None:
                # R21: the job's parameters saved as a template (a redelivery saves the same again)
                await self.templates.save(spec.save_as.name, spec.save_as.description, spec, record.id)
            await publish_js(self.broker, self.topo.work_validate, encode(WorkItem(record.id)),
                             stream=self.topo.stream_work.name, msg_id=f"{record.id}.validate")
            log.info("job accepted", name=record.name, version=record.version, request_id=request_id)
        return record

    async def accept_and_wait(self, spec: JobRequest, request_id: str, caller: Caller) -> JobRecord:
        """Accept (the caller authorised already), then wait (bounded) for the validator's verdict."""
        record = await self.accept(spec, request_id, None if caller.actor == audit.ADMIN else caller.actor)
        return await await_verdict(self.store, record, self.settings.intake.create_wait_s)

    # ---- tm.jobs.create
    async def on_create(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        spec = read_job_request(msg.body, self.settings.api.max_request_bytes)
        await self.authorise(caller, spec)
        return verdict_reply(await self.accept_and_wait(spec, request_id_of(msg, "create"), caller))
