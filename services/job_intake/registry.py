"""job-intake's registries: templates (saved job parameters, R9/R21), accounts (R5/R23, and
their quotas) and the preset algorithms catalog (R12), on ``tm.templates.*``, ``tm.accounts.*``,
``tm.algorithms.*``.  Every write is a KV compare-and-set (``trainmaster.kvstore``).

A template is its spec's project's (``spec.account``); an account is its own project
(``services/job_intake/policy.py`` says who may do what)."""

from __future__ import annotations

import time

import msgspec
import structlog
from faststream.nats import NatsMessage
from nats.js.errors import InvalidKeyError
from nats.js.kv import KeyValue

from services.job_intake.core import normalise, saved_template, updated_template
from services.job_intake.index import JobIndex
from services.job_intake.policy import only_visible, require_job_account, require_save_as, visible
from services.job_intake.replies import Refused, not_found, refused
from trainmaster import accounts, kvstore
from trainmaster.access import Caller, Role, require, require_cluster_admin
from trainmaster.algorithms import PresetCatalog
from trainmaster.catalog import EngineCatalog, ResourceCatalog
from trainmaster.decoding import decode_as, decode_empty
from trainmaster.identity import Directory
from trainmaster.messages import (
    Account,
    AccountCredit,
    AccountDetail,
    AccountList,
    AccountQuotaSet,
    EngineList,
    JobRequest,
    LedgerEntry,
    NameRef,
    PoolList,
    Template,
    TemplateList,
    TemplateSave,
    TemplateUpdate,
    Violation,
    encode,
)

log = structlog.get_logger()
_decode_template = msgspec.json.Decoder(Template).decode
_decode_account = msgspec.json.Decoder(accounts.Account).decode


class Templates:
    def __init__(self, kv: KeyValue, max_bytes: int, directory: Directory) -> None:
        self.kv = kv
        self.max_bytes = max_bytes
        self.directory = directory

    async def find(self, name: str) -> kvstore.Stored[Template] | None:
        return await kvstore.read(self.kv, name, _decode_template)

    async def save(self, name: str, description: str, spec: JobRequest, source_job: str | None) -> Template:
        """Store ``spec`` as template ``name`` (R21); an existing template of that name is replaced."""
        now = time.time()
        saved = await kvstore.change(
            self.kv, name, lambda current: saved_template(current, name, description, spec, source_job, now),
            decode=_decode_template)
        assert saved.value is not None  # saved_template always writes
        return saved.value

    @staticmethod
    def missing(name: str) -> Refused:
        return not_found("template", name, "list them with `trainmaster template list`")

    async def visible_template(self, caller: Caller, name: str) -> kvstore.Stored[Template]:
        """The template, if the caller views its project; else the reply to a missing one."""
        found = await self.find(name)
        if found is None or not visible(caller, found.value.spec.account):
            raise self.missing(name)
        return found

    # ---- request handlers
    async def on_list(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        decode_empty(msg.body, self.max_bytes)
        every = [_decode_template(v) for v in await kvstore.values(self.kv)]
        return encode(TemplateList(templates=only_visible(caller, every, lambda t: t.spec.account)))

    async def on_get(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        ref = decode_as(msg.body, NameRef, self.max_bytes)
        return encode((await self.visible_template(caller, ref.name)).value)

    async def on_save(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        request = decode_as(msg.body, TemplateSave, self.max_bytes)
        spec = normalise(request.spec)
        require_job_account(caller, spec.account, "saving a template")
        now = time.time()

        def decide(current: Template | None) -> Template:
            require_save_as(caller, request.name, current.spec.account if current is not None else None, "name")
            return saved_template(current, request.name, request.description, spec, None, now)

        saved = await kvstore.change(self.kv, request.name, decide, decode=_decode_template)
        return encode(saved.value)

    async def on_update(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        change = decode_as(msg.body, TemplateUpdate, self.max_bytes)
        now = time.time()
        moved_by = "spec.account" if change.spec is not None else "overrides.account"

        def decide(current: Template | None) -> Template:
            if current is None or not visible(caller, current.spec.account):
                raise self.missing(change.name)
            require(caller, current.spec.account, Role.MEMBER, "changing a template", "name")
            updated = updated_template(current, change, self.max_bytes, now)
            if updated.spec.account != current.spec.account:  # moved: a member of the new project too
                require(caller, updated.spec.account, Role.MEMBER, "moving a template to another project", moved_by)
            return updated

        updated = await kvstore.change(self.kv, change.name, decide, decode=_decode_template)
        return encode(updated.value)

    async def on_delete(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        ref = decode_as(msg.body, NameRef, self.max_bytes)
        found = await self.visible_template(caller, ref.name)
        require(caller, found.value.spec.account, Role.MEMBER, "deleting a template", "name")
        if not await kvstore.delete_at(self.kv, ref.name, found.revision):
            raise refused("conflict", f"template {ref.name} changed meanwhile; look at it again")
        return encode({"deleted": ref.name})


class Accounts:
    def __init__(self, kv: KeyValue, max_bytes: int, currency: str, index: JobIndex,
                 resources: ResourceCatalog, directory: Directory) -> None:
        self.kv = kv
        self.directory = directory
        self.max_bytes = max_bytes
        self.currency = currency
        self.index = index
        self.resources = resources

    @staticmethod
    def missing(name: str) -> Refused:
        return not_found("account", name, "list them with `trainmaster account list`")

    def detail(self, account: Account) -> AccountDetail:
        """The account and what its placed jobs hold now (from this replica's index: a walk over
        the placed jobs, no read)."""
        in_use = accounts.use_of(self.index.placed_of(account.name), self.resources)
        return AccountDetail(**msgspec.structs.asdict(account), in_use=in_use)

    async def on_list(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        decode_empty(msg.body, self.max_bytes)
        items = only_visible(caller, [_decode_account(v) for v in await kvstore.values(self.kv)], lambda a: a.name)
        # the list shows balances; ledgers are for `get`
        return encode(AccountList(accounts=[msgspec.structs.replace(a, ledger=a.ledger[-5:]) for a in items]))

    async def on_get(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        ref = decode_as(msg.body, NameRef, self.max_bytes)
        try:
            found = await accounts.get(self.kv, ref.name)
        except InvalidKeyError:
            found = None
        if found is None or not visible(caller, ref.name):
            raise self.missing(ref.name)
        return encode(self.detail(found[0]))

    async def on_quota(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        change = decode_as(msg.body, AccountQuotaSet, self.max_bytes)
        require(caller, change.name, Role.ADMIN, "setting a project's quota", "name")
        if not change.clear and not accounts.quota_limits_given(change):
            raise refused("invalid_request", "the quota request changes nothing", [Violation(
                "$", "nothing_to_change", "give at least one limit (cpus, gpus, nodes, jobs: a number to set it, "
                "null to remove it) or clear: true")])
        try:
            account = await accounts.set_quota(self.kv, change)
        except LookupError:
            raise self.missing(change.name) from None
        log.info("account quota set", account=change.name, quota=accounts.describe_quota(account.quota))
        return encode(self.detail(account))

    async def on_credit(self, msg: NatsMessage) -> bytes:
        require_cluster_admin(self.directory.caller(msg.headers), "crediting a project")
        credit = decode_as(msg.body, AccountCredit, self.max_bytes)
        now = time.time()
        entry_id = f"credit:{credit.credit_id or f'{now:.6f}'}"
        entry = LedgerEntry(id=entry_id, kind="credit", amount=credit.amount, at=now, note=credit.note)
        account, applied = await accounts.post(self.kv, credit.name, entry, currency=self.currency, create=True)
        log.info("account credited", account=credit.name, amount=credit.amount, applied=applied,
                 balance=account.balance)
        return encode(account)


class Algorithms:
    """Anyone known may read the catalog: resolving the caller refuses revoked credentials."""

    def __init__(self, catalog: PresetCatalog, max_bytes: int, directory: Directory) -> None:
        self.catalog = catalog
        self.max_bytes = max_bytes
        self.directory = directory

    async def on_list(self, msg: NatsMessage) -> bytes:
        self.directory.caller(msg.headers)
        decode_empty(msg.body, self.max_bytes)
        return encode({"algorithms": self.catalog.presets})

    async def on_get(self, msg: NatsMessage) -> bytes:
        self.directory.caller(msg.headers)
        ref = decode_as(msg.body, NameRef, self.max_bytes)
        preset = self.catalog.preset(ref.name)
        if preset is None:
            raise not_found("preset algorithm", ref.name, "list them with `trainmaster algorithm list`")
        return encode(preset)


class Pools:
    """The resource catalog's pools, flavors and prices, to anyone known (what the HTTP API's
    create form offers; a dedicated pool names the projects it admits)."""

    def __init__(self, catalog: ResourceCatalog, currency: str, max_bytes: int, directory: Directory) -> None:
        self.reply = encode(PoolList(catalog.pools, currency))
        self.max_bytes = max_bytes
        self.directory = directory

    async def on_list(self, msg: NatsMessage) -> bytes:
        self.directory.caller(msg.headers)
        decode_empty(msg.body, self.max_bytes)
        return self.reply


class Engines:
    """The engines of the "common framework" algorithm source, to anyone known (the create form's
    Engine and Engine version pickers)."""

    def __init__(self, catalog: EngineCatalog, max_bytes: int, directory: Directory) -> None:
        self.reply = encode(EngineList(catalog.engines))
        self.max_bytes = max_bytes
        self.directory = directory

    async def on_list(self, msg: NatsMessage) -> bytes:
        self.directory.caller(msg.headers)
        decode_empty(msg.body, self.max_bytes)
        return self.reply
