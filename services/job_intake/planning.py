"""``tm.jobs.plan`` (R22: the normalised spec, every violation and warning, the price per hour)
and ``tm.jobs.new_version`` (R8: the latest version's spec with overrides becomes the next version).

The rules stay the validator's: the plan asks it over ``tm.validator.check`` (request/reply), so
the facts (files, buckets, registries) are gathered in one place and a plan says exactly what
creating the job would say.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import msgspec
import structlog
from faststream.nats import NatsMessage
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError

from services.job_intake.core import (
    RequestError,
    check_name,
    decode_as,
    format_version,
    normalise,
    with_overrides,
    without_save_as,
)
from trainmaster import accounts
from trainmaster.bus import MSG_ID, error_reply, responder
from trainmaster.catalog import load_resources
from trainmaster.messages import (
    CheckReply,
    CheckRequest,
    JobRecord,
    JobRequest,
    NewVersionRequest,
    PlanReply,
    Status,
    Violation,
    encode,
    summary_of,
)

if TYPE_CHECKING:
    from services.job_intake.app import Intake

log = structlog.get_logger()


class ValidatorUnavailable(Exception):
    pass


class Planner:
    def __init__(self, intake: Intake, accounts_kv) -> None:
        self.intake = intake
        self.settings = intake.settings
        self.accounts_kv = accounts_kv
        self.resources = load_resources(self.settings.catalog.catalog_dir)

    async def check(self, spec: JobRequest) -> CheckReply:
        try:
            reply = await self.intake.ctx.broker.connection.request(
                self.intake.topo.validator_check, encode(CheckRequest(spec)),
                timeout=self.settings.intake.create_wait_s)
        except (NoRespondersError, NatsTimeoutError, TimeoutError) as exc:
            raise ValidatorUnavailable(f"the validator did not answer ({type(exc).__name__})") from exc
        return msgspec.json.decode(reply.data, type=CheckReply)

    async def plan(self, spec: JobRequest) -> PlanReply:
        verdict = await self.check(spec)
        pool = self.resources.pool(spec.resources.pool)
        flavor = pool.flavor(spec.resources.flavor) if pool is not None else None
        account = await accounts.get(self.accounts_kv, spec.account or self.settings.billing.default_account)
        return PlanReply(
            spec=spec, valid=not verdict.violations, violations=verdict.violations, warnings=verdict.warnings,
            price_per_hour=accounts.price_per_hour(spec.resources, self.resources),
            currency=self.settings.billing.currency,
            flavor=flavor.name if flavor else None, next_version=await self._next_version(spec.name),
            account_balance=account[0].balance if account else None,
        )

    async def _next_version(self, name: str | None) -> str | None:
        if not name:
            return None
        try:
            entry = await self.intake.names.get(name)
            return format_version(int(entry.value or b"0") + 1)
        except KeyNotFoundError:
            return format_version(1)

    async def _plan_reply(self, spec: JobRequest) -> bytes:
        try:
            return encode(await self.plan(spec))
        except ValidatorUnavailable as exc:
            return error_reply("unavailable", f"{exc}; try again", [Violation("$", "unavailable", str(exc))])

    # ---- tm.jobs.plan
    async def on_plan(self, msg: NatsMessage) -> bytes:
        try:
            spec = self.intake.parse(msg.body)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        return await self._plan_reply(spec)

    # ---- tm.jobs.new_version
    def latest(self, name: str) -> str | None:
        jobs = [j for j in self.intake.index.jobs.values() if j.name == name]
        if not jobs:
            return None
        return max(jobs, key=lambda j: (int(j.version[1:]) if j.version[1:].isdigit() else 0, j.created_at)).id

    async def on_new_version(self, msg: NatsMessage) -> bytes:
        try:
            request = decode_as(msg.body, NewVersionRequest, self.settings.api.max_request_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        job_id = self.latest(request.name)
        record: JobRecord | None = await self.intake.store.find(job_id) if job_id else None
        if record is None:
            return error_reply("not_found", f"no job named {request.name!r}", [Violation(
                "name", "not_found", "new-version continues an existing job: create its first version with "
                "`trainmaster job create`")])
        try:
            spec = normalise(with_overrides(without_save_as(record.spec), request.overrides,
                                            self.settings.api.max_request_bytes))
            check_name(spec.name)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        if spec.name != request.name:
            return error_reply("invalid_request", "a new version keeps the job's name", [Violation(
                "overrides.name", "invalid_override", "to start another job, use `trainmaster job create`")])
        if request.dry_run:
            return await self._plan_reply(spec)
        request_id = (msg.headers or {}).get(MSG_ID) or f"new-version-{uuid.uuid4()}"
        created = await self.intake.accept(spec, request_id)
        created = await self.intake._await_verdict(created)
        log.info("new version", name=created.name, version=created.version, from_version=record.version)
        if created.status == Status.FAILED and created.violations:
            return error_reply("validation_failed", created.failure_reason or "the job is not valid",
                               created.violations, job=summary_of(created))
        return encode(summary_of(created))


def serve(intake: Intake, planner: Planner) -> None:
    broker, topo = intake.ctx.broker, intake.topo
    responder(broker, topo.jobs("plan"), "job-intake", planner.on_plan)
    responder(broker, topo.jobs("new_version"), "job-intake", planner.on_new_version)
