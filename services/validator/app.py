"""validator service shell: take a job from ``tm.work.validate``, check it, record the verdict.
Also answers ``tm.validator.check`` (internal request/reply): the same rules on a spec that is
not a job yet, for ``tm.jobs.plan``.

The verdict is one change with ``change_id="verdict"``, so however often a work item is
delivered, only one verdict ever lands on a job.  After ``Validated`` the job goes on to the
scheduler through ``tm.work.schedule`` (``Nats-Msg-Id`` = ``<job_id>.schedule``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import structlog
from faststream.nats import NatsBroker, NatsMessage

from services.validator import facts as facts_adapter
from services.validator.model import Facts
from services.validator.rules import check, warnings
from trainmaster import accounts, kvstore
from trainmaster.bus import UNDECODABLE, Handler, Poison, durable_subscriber, error_reply, publish_js, responder
from trainmaster.jobstore import JobStore
from trainmaster.limits import cap_violations
from trainmaster.messages import (
    Account,
    CheckReply,
    CheckRequest,
    Dataset,
    DatasetVersion,
    JobRequest,
    Rejected,
    Status,
    TopicRecord,
    Validated,
    WorkItem,
    encode,
)
from trainmaster.service import ServiceContext
from trainmaster.settings import Settings
from trainmaster.statemachine import IllegalTransition
from trainmaster.storage import Storage
from trainmaster.topology import Topology

log = structlog.get_logger()
_decode_item = msgspec.json.Decoder(WorkItem).decode
_decode_check = msgspec.json.Decoder(CheckRequest).decode

VERDICT = "verdict"
T = TypeVar("T")

Collect = Callable[[JobRequest], Awaitable[Facts]]


async def setup(ctx: ServiceContext) -> None:
    s = ctx.settings
    store = await JobStore(ctx.broker, ctx.topo, source="validator").open()
    accounts_kv = await ctx.broker.key_value(ctx.topo.bucket_accounts.name, declare=False)
    await accounts.ensure(accounts_kv, s.billing.default_account, s.billing.default_account_balance, s.billing.currency)
    collect = make_collector(ctx.broker, ctx.topo, s)
    handle = make_handler(store, ctx.broker, ctx.topo, collect, publish_timeout_s=s.bus.publish_timeout_s)
    durable_subscriber(ctx.broker, ctx.topo, ctx.topo.consumer_validator, handle)
    responder(ctx.broker, ctx.topo.validator_check, "validator", make_checker(collect))


def make_collector(broker: NatsBroker, topo: Topology, settings: Settings) -> Collect:
    """Facts of a spec: files (local and s3://) and the registries in KV."""
    storage = Storage(settings)
    buckets: dict[str, object] = {}

    async def kv(name: str):
        if name not in buckets:
            buckets[name] = await broker.key_value(name, declare=False)
        return buckets[name]

    async def read(bucket: str, key: str, type_: type[T]) -> T | None:
        found = await kvstore.read(await kv(bucket), key, msgspec.json.Decoder(type_).decode)  # type: ignore[arg-type]
        return None if found is None else found.value

    async def dataset(name: str) -> Dataset | None:
        return await read(topo.bucket_datasets.name, name, Dataset)

    async def version(name: str, ver: str) -> DatasetVersion | None:
        return await read(topo.bucket_dataset_versions.name, f"{name}.{ver}", DatasetVersion)

    async def account(name: str) -> Account | None:
        return await read(topo.bucket_accounts.name, name, Account)

    async def topic_project(name: str) -> str | None:
        topic = await read(topo.bucket_topics.name, name, TopicRecord)
        return None if topic is None else topic.project

    lookups = facts_adapter.Lookups(dataset=dataset, version=version, account=account, topic_project=topic_project)

    async def collect(spec: JobRequest) -> Facts:
        return await facts_adapter.collect(spec, storage=storage, lookups=lookups, region=settings.storage.region,
                                           default_account=settings.billing.default_account,
                                           catalog_dir=settings.catalog.catalog_dir,
                                           roots=settings.storage_roots_for)

    return collect


def make_checker(collect: Collect):
    async def answer(msg: NatsMessage) -> bytes:
        try:
            request = _decode_check(msg.body)
        except UNDECODABLE as exc:
            return error_reply("invalid_request", f"not a check request: {exc}")
        facts = await collect(request.spec)
        # bounded like a rejected job's: the plan reply must fit the payload limit
        return encode(CheckReply(violations=cap_violations(check(request.spec, facts)),
                                 warnings=cap_violations(warnings(request.spec, facts), noun="warnings")))

    return answer


def make_handler(store: JobStore, broker: NatsBroker, topo: Topology, collect: Collect, *,
                 publish_timeout_s: float = 10.0) -> Handler:
    async def schedule(job_id: str) -> None:
        await publish_js(broker, topo.work_schedule, encode(WorkItem(job_id)),
                         stream=topo.stream_work.name, msg_id=f"{job_id}.schedule", timeout=publish_timeout_s)

    async def handle(msg: NatsMessage) -> None:
        try:
            item = _decode_item(msg.body)
        except UNDECODABLE as exc:
            raise Poison(f"not a work item: {exc}") from exc
        with structlog.contextvars.bound_contextvars(job_id=item.job_id):
            await validate(item.job_id)

    async def validate(job_id: str) -> None:
        record = await store.find(job_id)
        if record is None:
            log.warning("work item for an unknown job; dropped")
            return
        if record.status != Status.INITIALIZING:
            # a redelivery after the verdict landed: make sure the scheduler heard of it
            if record.status == Status.PENDING:
                await schedule(job_id)
            log.info("verdict already recorded", status=record.status.value)
            return

        spec = record.spec
        facts = await collect(spec)
        found = check(spec, facts)
        # the record and its event hold at most MAX_DETAILS of them (the last counts the rest):
        # thousands would not fit the payload limit, and the job would stay Initializing
        violations = cap_violations(found)
        change = (Rejected(change_id=VERDICT, violations=violations) if violations
                  else Validated(change_id=VERDICT, warnings=cap_violations(warnings(spec, facts), noun="warnings")))
        try:
            result = await store.apply(job_id, change)
        except IllegalTransition as exc:
            log.info("job moved on before the verdict; nothing recorded", why=str(exc))
            return
        if result.record.status == Status.PENDING:
            await schedule(job_id)
        if violations:
            log.info("job rejected", violations=len(found),
                     codes=sorted({v.code for v in found}), applied=result.applied)
        else:
            log.info("job validated", warnings=len(change.warnings), applied=result.applied,
                     status=result.record.status.value)

    return handle
