"""Accounts and billing (R5, R23): pure arithmetic plus the compare-and-set writes on ``tm_accounts``.

A job is charged once: the charge's ledger id is ``charge:<job id>``; applying a ledger entry whose
id the account already holds changes nothing, so a redelivered "job ended" event never charges
twice.  Every write is a KV update at the revision read (compare-and-set), retried on fresh state.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from nats.js.kv import KeyValue

from trainmaster import kvstore
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
    found = await kvstore.read(kv, name, _decode)
    return None if found is None else (found.value, found.revision)


async def ensure(kv: KeyValue, name: str, balance: float, currency: str, clock: Callable[[], float] = time.time
                 ) -> Account:
    """The account ``name``, created with ``balance`` when it does not exist yet (idempotent)."""
    changed = await kvstore.change(
        kv, name, lambda found: new_account(name, balance, currency, clock()) if found is None else None,
        decode=_decode)
    assert changed.value is not None
    return changed.value


async def post(kv: KeyValue, name: str, entry: LedgerEntry, *, currency: str, create: bool,
               clock: Callable[[], float] = time.time, attempts: int = kvstore.CHANGE_ATTEMPTS
               ) -> tuple[Account, bool]:
    """Apply ``entry`` to account ``name`` with compare-and-set; returns (account, applied now).
    ``create``: an account that does not exist starts at 0 (credits create accounts; charges of
    an account deleted meanwhile too, so a job's cost is never lost)."""

    def decide(account: Account | None) -> Account | None:
        if account is None:
            if not create:
                raise LookupError(f"no account {name!r}")
            account = new_account(name, 0.0, currency, clock())
        return apply_entry(account, entry, clock())

    changed = await kvstore.change(kv, name, decide, decode=_decode, attempts=attempts)
    assert changed.value is not None  # an absent account is created or refused above
    return changed.value, changed.written
