"""job-intake's registries: templates (saved job parameters, R9/R21), accounts (R5/R23)
and the preset algorithms catalog (R12), on ``tm.templates.*``, ``tm.accounts.*``,
``tm.algorithms.*``.  Every write is a KV compare-and-set."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import structlog
from faststream.nats import NatsMessage
from nats.js.errors import InvalidKeyError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.job_intake.core import RequestError, decode_as, normalise, with_overrides, without_save_as
from trainmaster import accounts
from trainmaster.algorithms import PresetCatalog
from trainmaster.bus import error_reply, responder
from trainmaster.decoding import decode_empty
from trainmaster.messages import (
    AccountCredit,
    AccountList,
    JobRequest,
    LedgerEntry,
    NameRef,
    Template,
    TemplateList,
    TemplateUpdate,
    Violation,
    encode,
)
from trainmaster.service import ServiceContext

log = structlog.get_logger()
_decode_template = msgspec.json.Decoder(Template).decode


def not_found(kind: str, name: str, hint: str) -> bytes:
    return error_reply("not_found", f"no {kind} named {name!r}", [Violation("name", "not_found", hint)])


async def _entries(kv: KeyValue) -> list[bytes]:
    """The current value of every key (one watch over the bucket, not a get per key)."""
    watcher = await kv.watchall(include_history=False)
    out: dict[str, bytes] = {}
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value and entry.operation not in ("DEL", "PURGE"):
                out[entry.key] = entry.value
    finally:
        await watcher.stop()
    return [out[k] for k in sorted(out)]


class Templates:
    def __init__(self, kv: KeyValue, max_bytes: int) -> None:
        self.kv = kv
        self.max_bytes = max_bytes

    async def find(self, name: str) -> tuple[Template, int] | None:
        try:
            entry = await self.kv.get(name)
        except (KeyNotFoundError, InvalidKeyError):
            return None
        return (_decode_template(entry.value), entry.revision or 0) if entry.value else None

    async def save(self, name: str, description: str, spec: JobRequest, source_job: str | None) -> Template:
        """Store ``spec`` as template ``name`` (R21); an existing template of that name is replaced."""
        spec = without_save_as(spec)
        while True:
            now = time.time()
            found = await self.find(name)
            if found is None:
                template = Template(name=name, spec=spec, created_at=now, updated_at=now, description=description,
                                    source_job=source_job)
                try:
                    await self.kv.create(name, encode(template))
                    return template
                except KeyWrongLastSequenceError:
                    continue
            old, revision = found
            template = msgspec.structs.replace(old, spec=spec, description=description, updated_at=now,
                                               source_job=source_job)
            try:
                await self.kv.update(name, encode(template), last=revision)
                return template
            except KeyWrongLastSequenceError:
                continue

    # ---- request handlers
    async def on_list(self, msg: NatsMessage) -> bytes:
        try:
            decode_empty(msg.body, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        items = [_decode_template(v) for v in await _entries(self.kv)]
        return encode(TemplateList(templates=items))

    async def on_get(self, msg: NatsMessage) -> bytes:
        try:
            ref = decode_as(msg.body, NameRef, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        found = await self.find(ref.name)
        if found is None:
            return not_found("template", ref.name, "list them with `trainmaster template list`")
        return encode(found[0])

    async def on_update(self, msg: NatsMessage) -> bytes:
        try:
            change = decode_as(msg.body, TemplateUpdate, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        while True:
            found = await self.find(change.name)
            if found is None:
                return not_found("template", change.name, "list them with `trainmaster template list`")
            old, revision = found
            try:
                spec = change.spec if change.spec is not None else old.spec
                spec = normalise(with_overrides(spec, change.overrides, self.max_bytes))
            except RequestError as err:
                return error_reply(err.body.code, err.body.message, err.body.details)
            updated = msgspec.structs.replace(
                old, spec=without_save_as(spec), updated_at=time.time(),
                description=change.description if change.description is not None else old.description)
            try:
                await self.kv.update(change.name, encode(updated), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return encode(updated)

    async def on_delete(self, msg: NatsMessage) -> bytes:
        try:
            ref = decode_as(msg.body, NameRef, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        found = await self.find(ref.name)
        if found is None:
            return not_found("template", ref.name, "list them with `trainmaster template list`")
        try:
            await self.kv.delete(ref.name, last=found[1])
        except KeyWrongLastSequenceError:
            return error_reply("conflict", f"template {ref.name} changed meanwhile; look at it again")
        return encode({"deleted": ref.name})


class Accounts:
    def __init__(self, kv: KeyValue, max_bytes: int, currency: str) -> None:
        self.kv = kv
        self.max_bytes = max_bytes
        self.currency = currency

    async def on_list(self, msg: NatsMessage) -> bytes:
        try:
            decode_empty(msg.body, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        items = [msgspec.json.decode(v, type=accounts.Account) for v in await _entries(self.kv)]
        # the list shows balances; ledgers are for `get`
        return encode(AccountList(accounts=[msgspec.structs.replace(a, ledger=a.ledger[-5:]) for a in items]))

    async def on_get(self, msg: NatsMessage) -> bytes:
        try:
            ref = decode_as(msg.body, NameRef, self.max_bytes)
            found = await accounts.get(self.kv, ref.name)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        except InvalidKeyError:
            found = None
        if found is None:
            return not_found("account", ref.name, "list them with `trainmaster account list`")
        return encode(found[0])

    async def on_credit(self, msg: NatsMessage) -> bytes:
        try:
            credit = decode_as(msg.body, AccountCredit, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        now = time.time()
        entry_id = f"credit:{credit.credit_id or f'{now:.6f}'}"
        entry = LedgerEntry(id=entry_id, kind="credit", amount=credit.amount, at=now, note=credit.note)
        account, applied = await accounts.post(self.kv, credit.name, entry, currency=self.currency, create=True)
        log.info("account credited", account=credit.name, amount=credit.amount, applied=applied,
                 balance=account.balance)
        return encode(account)


class Algorithms:
    def __init__(self, catalog: PresetCatalog, max_bytes: int) -> None:
        self.catalog = catalog
        self.max_bytes = max_bytes

    async def on_list(self, msg: NatsMessage) -> bytes:
        try:
            decode_empty(msg.body, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        return encode({"algorithms": self.catalog.presets})

    async def on_get(self, msg: NatsMessage) -> bytes:
        try:
            ref = decode_as(msg.body, NameRef, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        preset = self.catalog.preset(ref.name)
        if preset is None:
            return not_found("preset algorithm", ref.name, "list them with `trainmaster algorithm list`")
        return encode(preset)


def serve(ctx: ServiceContext, templates: Templates, accounts_api: Accounts, algorithms: Algorithms) -> None:
    topo = ctx.topo
    handlers: dict[str, Any] = {
        topo.templates("list"): templates.on_list, topo.templates("get"): templates.on_get,
        topo.templates("update"): templates.on_update, topo.templates("delete"): templates.on_delete,
        topo.accounts("list"): accounts_api.on_list, topo.accounts("get"): accounts_api.on_get,
        topo.accounts("credit"): accounts_api.on_credit,
        topo.algorithms("list"): algorithms.on_list, topo.algorithms("get"): algorithms.on_get,
    }
    for subject, handle in handlers.items():
        responder(ctx.broker, subject, "job-intake", handle)
