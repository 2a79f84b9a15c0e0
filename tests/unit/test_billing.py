"""Billing arithmetic (trainmaster/accounts.py): price per hour, billed time, idempotent ledger; and
the quota an account (project) keeps: setting, removing and clearing limits, describing them, and
what placed jobs hold."""

from __future__ import annotations

import pytest

from trainmaster import accounts
from trainmaster.catalog import load_resources
from trainmaster.messages import AccountQuota, AccountQuotaSet, AccountUse, HistoryEntry, LedgerEntry, Resources, Status

S = Status


def history(*steps: tuple[float, Status]) -> list[HistoryEntry]:
    return [HistoryEntry(i, at, "x", status, f"c{i}") for i, (at, status) in enumerate(steps)]


def test_price_is_flavor_price_times_node_count():
    catalog = load_resources()
    assert accounts.price_per_hour(Resources(pool="cpu", node_count=1), catalog) == 0.05  # default flavor
    assert accounts.price_per_hour(Resources(pool="gpu", flavor="gpu.a100", node_count=4), catalog) == 10.0
    assert accounts.price_per_hour(Resources(pool="cpu", flavor="gpu.t4"), catalog) is None
    assert accounts.price_per_hour(Resources(pool="tpu"), catalog) is None


@pytest.mark.parametrize(("steps", "seconds"), [
    ([(0, S.INITIALIZING), (1, S.PENDING), (2, S.SCHEDULED), (5, S.RUNNING), (65, S.SUCCEEDED)], 60.0),
    ([(0, S.INITIALIZING), (5, S.RUNNING), (10, S.STOPPING), (12, S.STOPPED)], 7.0),
    # a retried job: both runs count, the wait between them does not
    ([(0, S.RUNNING), (10, S.PENDING), (20, S.SCHEDULED), (30, S.RUNNING), (35, S.FAILED)], 15.0),
    # a node report that keeps the job Running does not restart the clock
    ([(0, S.RUNNING), (4, S.RUNNING), (9, S.SUCCEEDED), (20, S.SUCCEEDED)], 9.0),
])
def test_billed_seconds_count_running_time_only(steps, seconds):
    assert accounts.billed_seconds(history(*steps)) == seconds


def test_a_job_that_never_ran_is_not_billed():
    assert accounts.billed_seconds(history((0, S.INITIALIZING), (1, S.FAILED))) is None
    assert accounts.billed_seconds(history((0, S.PENDING), (1, S.SCHEDULED), (2, S.FAILED))) is None


def test_cost():
    assert accounts.cost_of(0.4, 1800) == 0.2


def test_a_ledger_entry_applies_once():
    account = accounts.new_account("a", 1.0, "USD", 0)
    charge = LedgerEntry("charge:job-1", "charge", -0.25, 1, "job-1")
    once = accounts.apply_entry(account, charge, 1)
    assert once is not None and once.balance == 0.75
    assert accounts.apply_entry(once, charge, 2) is None
    twice = accounts.apply_entry(once, LedgerEntry("charge:job-2", "charge", -1, 2, "job-2"), 2)
    assert twice is not None and twice.balance == -0.25


def test_the_ledger_is_bounded():
    account = accounts.new_account("a", 0, "USD", 0)
    for i in range(accounts.LEDGER_KEEP + 10):
        account = accounts.apply_entry(account, LedgerEntry(f"credit:{i}", "credit", 1, i), i)
    assert len(account.ledger) == accounts.LEDGER_KEEP and account.balance == accounts.LEDGER_KEEP + 10


# ------------------------------------------------------------------------------ quotas
def test_a_quota_request_sets_removes_or_keeps_each_limit():
    current = AccountQuota(cpus=8, gpus=2)
    assert accounts.quota_after(current, AccountQuotaSet(name="a", jobs=3)) == AccountQuota(cpus=8, gpus=2, jobs=3)
    assert accounts.quota_after(current, AccountQuotaSet(name="a", gpus=None)) == AccountQuota(cpus=8)
    assert accounts.quota_after(current, AccountQuotaSet(name="a", clear=True, nodes=4)) == AccountQuota(nodes=4)
    assert accounts.quota_after(current, AccountQuotaSet(name="a", clear=True)) is None, "no limit left: no quota"
    assert accounts.quota_after(None, AccountQuotaSet(name="a", cpus=None)) is None
    assert accounts.quota_after(None, AccountQuotaSet(name="a", gpus=0)) == AccountQuota(gpus=0), "0: none at all"
    assert accounts.quota_limits_given(AccountQuotaSet(name="a")) == {}
    assert accounts.quota_limits_given(AccountQuotaSet(name="a", cpus=2.5, jobs=None)) == {"cpus": 2.5, "jobs": None}


def test_an_account_is_rewritten_only_when_its_quota_changes():
    account = accounts.new_account("a", 1.0, "USD", now=1.0)
    limited = accounts.with_quota(account, AccountQuotaSet(name="a", jobs=1), now=2.0)
    assert limited is not None and limited.quota == AccountQuota(jobs=1) and limited.updated_at == 2.0
    assert limited.balance == 1.0 and limited.ledger == []
    assert accounts.with_quota(limited, AccountQuotaSet(name="a", jobs=1), now=3.0) is None
    assert accounts.with_quota(account, AccountQuotaSet(name="a", clear=True), now=3.0) is None


def test_a_quota_described():
    assert accounts.describe_quota(None) == "no quota"
    assert accounts.describe_quota(AccountQuota(cpus=8, gpus=1, jobs=2)) == "at most 8 CPUs, 1 GPU, 2 jobs at once"
    assert accounts.describe_quota(AccountQuota(cpus=0.5, nodes=1)) == "at most 0.5 CPUs, 1 node at once"


def test_what_placed_jobs_hold_comes_from_their_flavors():
    catalog = load_resources()
    held = [Resources(pool="gpu", flavor="gpu.h100x8", node_count=2), Resources(pool="cpu"),
            Resources(pool="gone", node_count=3)]
    assert accounts.use_of(held, catalog) == AccountUse(cpus=2 * 96 + 1, gpus=16, nodes=6, jobs=3)
    assert accounts.use_of([], catalog) == AccountUse()
