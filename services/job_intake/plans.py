"""``tm.jobs.plan`` (R22: the normalised spec, every violation and warning, the price per hour)
and ``tm.jobs.new_version`` (R8: the latest version's spec with overrides becomes the next version).

The rules stay the validator's: the plan asks it over ``tm.validator.check`` (request/reply), so
the facts (files, buckets, registries) are gathered in one place and a plan says exactly what
creating the job would say.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import structlog
from faststream.nats import NatsBroker, NatsMessage
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.kv import KeyValue

from services.job_intake.accept import Intake
from services.job_intake.core import (
    check_name,
    format_version,
    latest_job,
    normalise,
    read_planned_request,
    with_overrides,
    without_save_as,
)
from services.job_intake.index import JobIndex
from services.job_intake.policy import require_job_account
from services.job_intake.replies import Refused, refused, request_id_of
from services.job_intake.verdict import verdict_reply
from services.job_intake.versions import VersionCounter
from trainmaster import accounts
from trainmaster.access import Role, require
from trainmaster.catalog import ResourceCatalog
from trainmaster.decoding import decode_as
from trainmaster.identity import Directory
from trainmaster.jobstore import JobStore
from trainmaster.messages import (
    CheckReply,
    CheckRequest,
    JobRecord,
    JobRequest,
    NewVersionRequest,
    PlanReply,
    Violation,
    encode,
)
from trainmaster.names import NAME_RE
from trainmaster.settings import Settings

log = structlog.get_logger()
_decode_check = msgspec.json.Decoder(CheckReply).decode


def _unavailable(exc: Exception) -> Refused:
    why = f"the validator did not answer ({type(exc).__name__})"
    return refused("unavailable", f"{why}; try again", [Violation("$", "unavailable", why)])


@dataclass(frozen=True, kw_only=True)
class JobPlans:
    broker: NatsBroker
    settings: Settings
    check_subject: str  # the validator's check
    resources: ResourceCatalog
    accounts_kv: KeyValue
    versions: VersionCounter
    index: JobIndex
    store: JobStore
    intake: Intake  # new versions are accepted as a create would be
    directory: Directory

    async def check(self, spec: JobRequest) -> CheckReply:
        """The validator's verdict on ``spec``; Refused (unavailable) when it does not answer in time."""
        try:
            reply = await self.broker.connection.request(
                self.check_subject, encode(CheckRequest(spec)), timeout=self.settings.intake.create_wait_s)
        except (NoRespondersError, NatsTimeoutError, TimeoutError) as exc:
            raise _unavailable(exc) from exc
        return _decode_check(reply.data)

    async def plan(self, spec: JobRequest) -> PlanReply:
        verdict = await self.check(spec)
        pool = self.resources.pool(spec.resources.pool)
        flavor = pool.flavor(spec.resources.flavor) if pool is not None else None
        account = await accounts.get(self.accounts_kv, spec.account or self.settings.billing.default_account)
        named = spec.name is not None and NAME_RE.match(spec.name) is not None
        next_version = format_version(await self.versions.upcoming(spec.name)) if named else None
        return PlanReply(
            spec=spec, valid=not verdict.violations, violations=verdict.violations, warnings=verdict.warnings,
            price_per_hour=accounts.price_per_hour(spec.resources, self.resources),
            currency=self.settings.billing.currency,
            flavor=flavor.name if flavor else None, next_version=next_version,
            account_balance=account[0].balance if account else None,
        )

    # ---- tm.jobs.plan
    async def on_plan(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        spec = read_planned_request(msg.body, self.settings.api.max_request_bytes)
        require_job_account(caller, spec.account, "planning a job")
        return encode(await self.plan(spec))

    # ---- tm.jobs.new_version
    async def on_new_version(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        request = decode_as(msg.body, NewVersionRequest, self.settings.api.max_request_bytes)
        # the versions the caller sees: another project's job of that name is not there for it
        job_id = latest_job(self.index.visible_jobs(caller.projects(Role.VIEWER)), request.name)
        record: JobRecord | None = await self.store.find(job_id) if job_id else None
        if record is None:
            raise refused("not_found", f"no job named {request.name!r}", [Violation(
                "name", "not_found", "new-version continues an existing job: create its first version with "
                "`trainmaster job create`")])
        require(caller, record.spec.account, Role.MEMBER, "making a new version of a job", "name")
        spec = normalise(with_overrides(without_save_as(record.spec), request.overrides,
                                        self.settings.api.max_request_bytes))
        check_name(spec.name)
        if spec.name != request.name:
            raise refused("invalid_request", "a new version keeps the job's name", [Violation(
                "overrides.name", "invalid_override", "to start another job, use `trainmaster job create`")])
        if spec.account != record.spec.account:  # moved to another project: a member of that one too
            require(caller, spec.account, Role.MEMBER, "moving a job to another project", "overrides.account")
        if request.dry_run:
            return encode(await self.plan(spec))
        created = await self.intake.accept_and_wait(spec, request_id_of(msg, "new-version"), caller)
        log.info("new version", name=created.name, version=created.version, from_version=record.version)
        return verdict_reply(created)
