"""Accounts and billing (R5, R23): pure arithmetic plus the compare-and-set writes on ``tm_accounts``.

A job is charged once: the charge's ledger id is ``charge:<job id>``; applying a ledger entry whose
id the account already holds changes nothing, so a redelivered "job ended" event never charges
twice.  Every write is a KV update at the revision read (compare-and-set), retried on fresh state.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from trainmaster.catalog import ResourceCatalog
from trainmaster.messages import Account, HistoryEntry, JobRecord, LedgerEntry, Resources, Status

LEDGER_KEEP = 1000  # the newest entries kept on an account (ids older than that are no longer needed)
_decode = msgspec.json.Decoder(Account).decode


def price_per_hour(resources: Resources, catalog: ResourceCatalog) -> float | None:
    """Flavor price x node count, or None when the pool or flavor is unknown."""
    pool = catalog.pool(resources.pool)
    flavor = pool.flavor(resources.flavor) if pool is not None else None
    if flavor is None:
        return None
    return round(flavor.price_per_hour * resources.node_count, 6)


RUNNING = (Status.RUNNING, Status.STOPPING)


def billed_seconds(history: list[HistoryEntry]) -> float | None:
    """How long the job ran: from each entry into Running until it left Running/Stopping, summed
    (a retried job runs more than once).  None when it never ran (nothing to bill)."""
    total = 0.0
    started: float | None = None
    ran = False
    for entry in history:
        if entry.status == Status.RUNNING and started is None:
            started, ran = entry.at, True
        elif entry.status not in RUNNING and started is not None:
            total += max(0.0, entry.at - started)
            started = None
    return total if ran else None


def cost_of(price: float, seconds: float) -> float:
    return round(price * seconds / 3600.0, 6)


def billable(record: JobRecord) -> bool:
    return record.status.terminal and record.billing is None and billed_seconds(record.history) is not None


def apply_entry(account: Account, entry: LedgerEntry, now: float) -> Account | None:
    """The account after ``entry``; None when the entry was applied already (idempotent)."""
    if any(e.id == entry.id for e in account.ledger):
        return None
    ledger = [*account.ledger, entry][-LEDGER_KEEP:]
    return msgspec.structs.replace(account, balance=round(account.balance + entry.amount, 6), updated_at=now,
                                   ledger=ledger)


def new_account(name: str, balance: float, currency: str, now: float) -> Account:
    return Account(name=name, balance=balance, currency=currency, created_at=now, updated_at=now)


async def get(kv: KeyValue, name: str) -> tuple[Account, int] | None:
    try:
        entry = await kv.get(name)
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    return _decode(entry.value), entry.revision or 0


async def ensure(kv: KeyValue, name: str, balance: float, currency: str, clock: Callable[[], float] = time.time
                 ) -> Account:
    """The account ``name``, created with ``balance`` when it does not exist yet (idempotent)."""
    found = await get(kv, name)
    if found is not None:
        return found[0]
    account = new_account(name, balance, currency, clock())
    try:
        await kv.create(name, msgspec.json.encode(account))
    except KeyWrongLastSequenceError:
        found = await get(kv, name)
        assert found is not None
        return found[0]
    return account


async def post(kv: KeyValue, name: str, entry: LedgerEntry, *, currency: str, create: bool,
               clock: Callable[[], float] = time.time, attempts: int = 50) -> tuple[Account, bool]:
    """Apply ``entry`` to account ``name`` with compare-and-set; returns (account, applied now).
    ``create``: an account that does not exist starts at 0 (credits create accounts; charges of
    an account deleted meanwhile too, so a job's cost is never lost)."""
    for _ in range(attempts):
        found = await get(kv, name)
        if found is None:
            if not create:
                raise LookupError(f"no account {name!r}")
            try:
                await kv.create(name, msgspec.json.encode(new_account(name, 0.0, currency, clock())))
            except KeyWrongLastSequenceError:
                pass
            continue
        account, revision = found
        updated = apply_entry(account, entry, clock())
        if updated is None:
            return account, False
        try:
            await kv.update(name, msgspec.json.encode(updated), last=revision)
        except KeyWrongLastSequenceError:
            continue  # somebody else wrote first: decide again on fresh state
        return updated, True
    raise RuntimeError(f"account {name}: gave up after {attempts} compare-and-set conflicts")
