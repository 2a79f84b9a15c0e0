"""The queue order (services/scheduler/queue.py): priority, fair share between accounts, age."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.placement import Demand, NodeShape
from services.scheduler.queue import FairQueue, QueuedJob, dominant_share, queue_order

SMALL = NodeShape("cpu", "small", Demand(1, 1024))
TOTALS = Demand(100, 102400, 0)


def job(job_id: str, account: str = "a", priority: int = 0, at: float = 0.0, nodes: int = 1) -> QueuedJob:
    return QueuedJob(job_id, account, priority, at, at, nodes, SMALL)


def test_dominant_share_is_the_largest_fraction_of_any_resource():
    totals = Demand(100, 1000, 10)
    assert dominant_share(Demand(10, 50, 0), totals) == 0.1
    assert dominant_share(Demand(1, 10, 5), totals) == 0.5
    assert dominant_share(Demand(1, 1, 1), Demand()) == 0.0


def test_higher_priority_first_then_oldest_first():
    jobs = [job("old-low", priority=0, at=1), job("new-high", priority=5, at=9), job("old-high", priority=5, at=2)]
    assert [j.job_id for j in queue_order(jobs, {}, TOTALS)] == ["old-high", "new-high", "old-low"]


def test_one_accounts_thousand_jobs_do_not_starve_another_accounts_one_job():
    flood = [job(f"flood-{i:04d}", account="flood", at=i) for i in range(1000)]
    lone = job("lone", account="lone", at=999.5)  # submitted last
    order = [j.job_id for j in queue_order([*flood, lone], {}, TOTALS)]
    assert order.index("lone") <= 1
    # even when the flooding account already runs a lot, the lone job goes first
    busy = [j.job_id for j in queue_order([*flood, lone], {"flood": 0.3}, TOTALS)]
    assert busy[0] == "lone"


def test_accounts_take_turns_by_what_they_hold():
    jobs = [job(f"a{i}", "a", at=i) for i in range(4)] + [job(f"b{i}", "b", at=10 + i) for i in range(4)]
    order = [j.job_id for j in queue_order(jobs, {}, TOTALS)]
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]
    # b already holds 2.5 jobs' worth: a gets three turns first
    order = [j.job_id for j in queue_order(jobs, {"b": 0.025}, TOTALS)]
    assert order[:4] == ["a0", "a1", "a2", "b0"]


def test_a_job_that_is_not_placed_costs_its_account_nothing():
    fair = FairQueue([job("a0", "a", at=0), job("a1", "a", at=1), job("b0", "b", at=2)], {})
    seen = []
    for queued in fair:
        seen.append(queued.job_id)
        if queued.job_id != "a0":  # a0 does not fit: not charged, so a's next job comes at once
            fair.charge(queued.account, 0.5)
    assert seen == ["a0", "a1", "b0"]


accounts = st.sampled_from(["a", "b", "c", "d"])
queue_jobs = st.lists(st.tuples(accounts, st.integers(-2, 2), st.integers(0, 50), st.integers(1, 3)),
                      max_size=60, unique_by=lambda t: (t[0], t[2]))


@settings(max_examples=200, deadline=None)
@given(entries=queue_jobs, usage=st.dictionaries(accounts, st.floats(0, 1)))
def test_queue_order_properties(entries, usage):
    jobs = [job(f"{acct}-{at}", acct, prio, float(at), nodes) for acct, prio, at, nodes in entries]
    order = queue_order(jobs, usage, TOTALS)
    # a permutation
    assert sorted(j.job_id for j in order) == sorted(j.job_id for j in jobs)
    # priority never goes up along the order
    assert all(x.priority >= y.priority for x, y in itertools.pairwise(order))
    # within one account and priority: oldest first
    for acct in "abcd":
        for prio in range(-2, 3):
            mine = [j.submitted_at for j in order if j.account == acct and j.priority == prio]
            assert mine == sorted(mine)


@settings(max_examples=200, deadline=None)
@given(counts=st.dictionaries(accounts, st.integers(1, 30), min_size=1))
def test_equal_accounts_are_served_round_robin(counts):
    """One priority, equal jobs, nothing running: in every prefix of the order, an account that
    still has jobs waiting is never more than one job behind any other."""
    jobs = [job(f"{acct}-{i}", acct, at=float(i)) for acct, n in counts.items() for i in range(n)]
    seen: Counter[str] = Counter()
    for queued in queue_order(jobs, {}, TOTALS):
        seen[queued.account] += 1
        for x in counts:
            for y in counts:
                if seen[y] < counts[y]:  # y still has jobs
                    assert seen[x] <= seen[y] + 1
