"""Accounts and billing (R5, R23), quotas: pure arithmetic plus the compare-and-set writes on
``tm_accounts``.

A job is charged once: the charge's ledger id is ``charge:<job id>``; applying a ledger entry whose
id the account already holds changes nothing, so a redelivered "job ended" event never charges
twice.  Every write is a KV update at the revision read (compare-and-set), retried on fresh state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import msgspec
from nats.js.kv import KeyValue

from trainmaster import kvstore
from trainmaster.catalog import ResourceCatalog
from trainmaster.messages import (
    Account,
    AccountQuota,
    AccountQuotaSet,
    AccountUse,
    HistoryEntry,
    JobRecord,
    LedgerEntry,
    Resources,
    Status,
)

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


# ------------------------------------------------------------------------------ quotas
QUOTA_LIMITS = ("cpus", "gpus", "nodes", "jobs")
NO_QUOTA = AccountQuota()


def quota_limits_given(change: AccountQuotaSet) -> dict[str, float | int | None]:
    """The limits a quota request sets (a number) or removes (None); those it leaves out are kept."""
    return {name: value for name in QUOTA_LIMITS if (value := getattr(change, name)) is not msgspec.UNSET}


def quota_after(current: AccountQuota | None, change: AccountQuotaSet) -> AccountQuota | None:
    """The quota once ``change`` is applied (None: no limit left)."""
    base = NO_QUOTA if change.clear or current is None else current
    quota = msgspec.structs.replace(base, **quota_limits_given(change))
    return None if quota == NO_QUOTA else quota


def with_quota(account: Account, change: AccountQuotaSet, now: float) -> Account | None:
    """The account with its new quota; None when the quota stays as it is (nothing to write)."""
    quota = quota_after(account.quota, change)
    if quota == account.quota:
        return None
    return msgspec.structs.replace(account, quota=quota, updated_at=now)


QUOTA_UNITS = {"cpus": ("CPU", "CPUs"), "gpus": ("GPU", "GPUs"), "nodes": ("node", "nodes"), "jobs": ("job", "jobs")}


def amount(value: float, limit: str) -> str:
    """``1 GPU``, ``2.5 CPUs``, ``3 jobs``: a quantity of one of the quota's limits."""
    singular, plural = QUOTA_UNITS[limit]
    return f"{value:g} {singular if value == 1 else plural}"


def describe_quota(quota: AccountQuota | None) -> str:
    """``at most 8 CPUs, 2 GPUs, 1 job at once`` or ``no quota``."""
    if quota is None:
        return "no quota"
    parts = [amount(value, name) for name in QUOTA_LIMITS if (value := getattr(quota, name)) is not None]
    return f"at most {', '.join(parts)} at once"


def use_of(jobs: Iterable[Resources], catalog: ResourceCatalog) -> AccountUse:
    """What jobs asking for ``jobs`` hold while placed: their flavors' CPUs and GPUs times their
    node counts (a flavor the catalog no longer has counts nodes and jobs only)."""
    cpus, gpus, nodes, count = 0.0, 0, 0, 0
    for resources in jobs:
        pool = catalog.pool(resources.pool)
        flavor = pool.flavor(resources.flavor) if pool is not None else None
        if flavor is not None:
            cpus += flavor.cpus * resources.node_count
            gpus += flavor.gpus * resources.node_count
        nodes += resources.node_count
        count += 1
    return AccountUse(cpus=round(cpus, 6), gpus=gpus, nodes=nodes, jobs=count)


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


async def set_quota(kv: KeyValue, change: AccountQuotaSet, clock: Callable[[], float] = time.time) -> Account:
    """Apply a quota request to an existing account (LookupError when there is none)."""

    def decide(account: Account | None) -> Account | None:
        if account is None:
            raise LookupError(f"no account {change.name!r}")
        return with_quota(account, change, clock())

    changed = await kvstore.change(kv, change.name, decide, decode=_decode)
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
