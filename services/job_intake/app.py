"""job-intake: the edge.  Decodes and normalises job requests, assigns id and version, stores the
record, hands the job to the validator; answers the read/command API (get, list, stop)."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import structlog
from faststream.nats import NatsMessage
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.job_intake.core import (
    RequestError,
    check_name,
    decode_as,
    format_version,
    new_job_id,
    normalise,
    request_key,
    request_token,
)
from services.job_intake.index import JobIndex
from services.job_intake.registry import Templates
from trainmaster.bus import MSG_ID, durable_subscriber, error_reply, publish_js, responder
from trainmaster.jobstore import JobStore
from trainmaster.messages import (
    Cancel,
    ErrorReply,
    GetRequest,
    JobRecord,
    JobRequest,
    ListReply,
    ListRequest,
    RequestCloudEvent,
    RequestEventData,
    Status,
    StopRequest,
    StopRequested,
    Violation,
    WorkItem,
    encode,
    summary_of,
)
from trainmaster.service import ServiceContext
from trainmaster.statemachine import IllegalTransition, new_record
from trainmaster.telemetry import current_traceparent

log = structlog.get_logger()


class _RequestClaim(msgspec.Struct):
    job_id: str
    version: str | None = None


class Intake:
    def __init__(self, ctx: ServiceContext, store: JobStore, names: KeyValue, requests: KeyValue,
                 index: JobIndex) -> None:
        self.ctx = ctx
        self.index = index
        self.topo = ctx.topo
        self.settings = ctx.settings
        self.store = store
        self.names = names
        self.requests = requests
        self._name_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self.templates: Templates | None = None  # set by setup_registries

    # ------------------------------------------------------------------ accepting a job
    async def accept(self, spec: JobRequest, request_id: str) -> JobRecord:
        """Idempotent on ``request_id``: a retried request returns the job created the first time."""
        key = request_key(request_id)
        claim, revision = await self._claim(key)
        existing = await self.store.find(claim.job_id)
        if existing is not None:
            return existing
        assert spec.name is not None
        if claim.version is None:
            version = format_version(await self._next_version(spec.name))
            claim = _RequestClaim(claim.job_id, version)
            await self.requests.update(key, msgspec.json.encode(claim), last=revision)
        assert claim.version is not None
        record = new_record(
            job_id=claim.job_id, name=spec.name, version=claim.version, spec=spec,
            request_id=request_id, now=time.time(), traceparent=current_traceparent(),
        )
        with structlog.contextvars.bound_contextvars(job_id=record.id):
            record = await self.store.create(record)
            self.index.put(record)
            if spec.save_as is not None and self.templates is not None:
                # R21: the job's parameters saved as a template (a redelivery saves the same again)
                await self.templates.save(spec.save_as.name, spec.save_as.description, spec, record.id)
            await publish_js(self.ctx.broker, self.topo.work_validate, encode(WorkItem(record.id)),
                             stream=self.topo.stream_work.name, msg_id=f"{record.id}.validate")
            log.info("job accepted", name=record.name, version=record.version, request_id=request_id)
        return record

    async def _claim(self, key: str) -> tuple[_RequestClaim, int]:
        while True:
            try:
                entry = await self.requests.get(key)
                assert entry.value is not None
                return msgspec.json.decode(entry.value, type=_RequestClaim), entry.revision or 0
            except KeyNotFoundError:
                pass
            claim = _RequestClaim(new_job_id(time.time()))
            try:
                return claim, await self.requests.create(key, msgspec.json.encode(claim))
            except KeyWrongLastSequenceError:
                continue  # a concurrent delivery of the same request claimed it first

    async def _next_version(self, name: str) -> int:
        """Per-name counter, incremented with compare-and-set between processes; within this
        process a per-name lock queues concurrent requests instead of letting them all race
        (10,000 requests under one name cost ~22 lost compare-and-sets each without it)."""
        lock, users = self._name_locks.get(name, (asyncio.Lock(), 0))
        self._name_locks[name] = (lock, users + 1)
        try:
            async with lock:
                return await self._increment(name)
        finally:
            lock, users = self._name_locks[name]
            if users == 1:  # keep the map small: drop a lock nobody holds or waits for
                del self._name_locks[name]
            else:
                self._name_locks[name] = (lock, users - 1)

    async def _increment(self, name: str) -> int:
        while True:
            try:
                entry = await self.names.get(name)
                current, revision = int(entry.value or b"0"), entry.revision or 0
            except KeyNotFoundError:
                try:
                    await self.names.create(name, b"1")
                    return 1
                except KeyWrongLastSequenceError:
                    continue
            try:
                await self.names.update(name, str(current + 1).encode(), last=revision)
                return current + 1
            except KeyWrongLastSequenceError:
                continue

    def parse(self, body: bytes) -> JobRequest:
        spec = normalise(decode_as(body, JobRequest, self.settings.api.max_request_bytes))
        check_name(spec.name)
        return spec

    # ------------------------------------------------------------------ tm.jobs.create
    async def on_create(self, msg: NatsMessage) -> bytes:
        try:
            spec = self.parse(msg.body)
        except RequestError as err:
            return encode(ErrorReply(err.body))
        request_id = (msg.headers or {}).get(MSG_ID) or f"create-{uuid.uuid4()}"
        record = await self.accept(spec, request_id)
        record = await self._await_verdict(record)
        summary = summary_of(record)
        if record.status == Status.FAILED and record.violations:
            return error_reply("validation_failed", record.failure_reason or "the job is not valid",
                               record.violations, job=summary)
        return encode(summary)

    async def _await_verdict(self, record: JobRecord) -> JobRecord:
        """Wait (bounded) until the validator moved the job out of Initializing, so that the reply
        to ``create`` carries the violations of an invalid job."""
        if record.status != Status.INITIALIZING or self.settings.intake.create_wait_s <= 0:
            return record
        watcher = await self.store.kv.watch(record.id, include_history=False)  # type: ignore[union-attr]
        try:
            deadline = time.monotonic() + self.settings.intake.create_wait_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    entry = await watcher.updates(timeout=left)
                except TimeoutError:
                    break
                if entry is None or entry.value is None:
                    continue
                latest = msgspec.json.decode(entry.value, type=JobRecord)
                if latest.status != Status.INITIALIZING:
                    return latest
        finally:
            await watcher.stop()
        return (await self.store.find(record.id)) or record

    # ------------------------------------------------------------------ tm.jobs.submit
    async def on_submit(self, msg: NatsMessage) -> None:
        # without a client request id, the stream sequence still makes redeliveries idempotent
        sequence = msg.raw_message.metadata.sequence.stream
        request_id = (msg.headers or {}).get(MSG_ID) or f"{self.topo.stream_requests.name}-{sequence}"
        try:
            spec = self.parse(msg.body)
        except RequestError as err:
            log.info("submission rejected", request_id=request_id, error=err.body.message)
            await self._request_event(request_id, "tm.request.rejected", RequestEventData(request_id, error=err.body))
            return
        record = await self.accept(spec, request_id)
        await self._request_event(request_id, "tm.request.accepted",
                                  RequestEventData(request_id, job=summary_of(record)))

    async def _request_event(self, request_id: str, type_: str, data: RequestEventData) -> None:
        token = request_token(request_id)
        event = RequestCloudEvent(
            id=f"request-{request_key(request_id)}", source="trainmaster/job-intake", type=type_, subject=request_id,
            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), data=data,
        )
        await publish_js(self.ctx.broker, self.topo.request_events(token), encode(event),
                         stream=self.topo.stream_events.name, msg_id=event.id)

    # ------------------------------------------------------------------ read / command API
    async def on_get(self, msg: NatsMessage) -> bytes:
        try:
            query = decode_as(msg.body, GetRequest, self.settings.api.max_request_bytes)
        except RequestError as err:
            return encode(ErrorReply(err.body))
        record = await self.store.find(query.id)
        if record is None:
            return _not_found(query.id)
        return encode(record)

    async def on_list(self, msg: NatsMessage) -> bytes:
        body = msg.body if msg.body.strip() else b"{}"
        try:
            query = decode_as(body, ListRequest, self.settings.api.max_request_bytes)
        except RequestError as err:
            return encode(ErrorReply(err.body))
        jobs, total = self.index.select(query)
        return encode(ListReply(jobs=jobs, total=total))

    async def on_stop(self, msg: NatsMessage) -> bytes:
        try:
            query = decode_as(msg.body, StopRequest, self.settings.api.max_request_bytes)
        except RequestError as err:
            return encode(ErrorReply(err.body))
        if await self.store.find(query.id) is None:
            return _not_found(query.id)
        with structlog.contextvars.bound_contextvars(job_id=query.id):
            try:
                result = await self.store.apply(query.id, StopRequested(change_id="stop", reason=query.reason))
            except IllegalTransition as exc:
                return error_reply("conflict", str(exc))
            record = result.record
            if record.status == Status.STOPPING:
                await self.cancel_nodes(record, query.reason)
            log.info("stop requested", status=record.status.value)
        return encode(summary_of(record))

    async def cancel_nodes(self, record: JobRecord, reason: str) -> None:
        for agent_id in sorted({p.agent_id for p in record.placements}):
            # the id names the agent: the server dedupes ids per stream, so one id for every agent
            # would reach only the first
            await publish_js(self.ctx.broker, self.topo.agent_control(agent_id),
                             encode(Cancel(job_id=record.id, reason=reason, attempt=record.attempt)),
                             stream=self.topo.stream_agent.name,
                             msg_id=f"{record.id}.{record.attempt}.{agent_id}.cancel")


def _not_found(job_id: str) -> bytes:
    return error_reply("not_found", f"no job with id {job_id!r}",
                       [Violation("id", "not_found", "check the id with `trainmaster job list`")])


async def setup(ctx: ServiceContext) -> None:
    topo = ctx.topo
    store = await JobStore(ctx.broker, topo, source="job-intake").open()
    names = await ctx.broker.key_value(topo.bucket_job_names.name, declare=False)
    requests = await ctx.broker.key_value(topo.bucket_requests.name, declare=False)
    index = JobIndex(store.kv)  # type: ignore[arg-type]
    await index.start()
    intake = Intake(ctx, store, names, requests, index)
    ctx.background(index.follow(), "job-index")

    durable_subscriber(ctx.broker, topo, topo.consumer_intake_submit, intake.on_submit)
    responder(ctx.broker, topo.jobs("create"), "job-intake", intake.on_create)
    responder(ctx.broker, topo.jobs("get"), "job-intake", intake.on_get)
    responder(ctx.broker, topo.jobs("list"), "job-intake", intake.on_list)
    responder(ctx.broker, topo.jobs("stop"), "job-intake", intake.on_stop)
    await setup_registries(ctx, intake, store)


async def setup_registries(ctx: ServiceContext, intake: Intake, store: JobStore) -> None:
    """Templates, datasets, accounts, algorithms, plan, new versions, billing."""
    from services.job_intake import datasets, planning, registry
    from services.job_intake.billing import Biller
    from trainmaster import accounts
    from trainmaster.algorithms import load_presets
    from trainmaster.catalog import load_resources
    from trainmaster.storage import Storage

    s, topo = ctx.settings, ctx.topo
    kv = {b.name: await ctx.broker.key_value(b.name, declare=False) for b in topo.registry_buckets}
    accounts_kv = kv[topo.bucket_accounts.name]
    await accounts.ensure(accounts_kv, s.billing.default_account, s.billing.default_account_balance, s.billing.currency)
    intake.templates = registry.Templates(kv[topo.bucket_templates.name], s.api.max_request_bytes)
    registry.serve(ctx, intake.templates, registry.Accounts(accounts_kv, s.api.max_request_bytes, s.billing.currency),
                   registry.Algorithms(load_presets(s.catalog.catalog_dir), s.api.max_request_bytes))
    datasets.serve(ctx, datasets.Datasets(kv[topo.bucket_datasets.name], kv[topo.bucket_dataset_versions.name],
                                          Storage(s), s.api.max_request_bytes))
    planning.serve(intake, planning.Planner(intake, accounts_kv))
    biller = Biller(store, accounts_kv, load_resources(s.catalog.catalog_dir),
                    default_account=s.billing.default_account, currency=s.billing.currency)
    durable_subscriber(ctx.broker, topo, topo.consumer_billing, biller.on_event)
