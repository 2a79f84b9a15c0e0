"""The scheduler's kept indexes (capacity.py, queue.QueueBook) and its wake-up decisions
(wakeup.py): the capacity index agrees with a brute-force scan of the agents whatever happened to
it, a pass planned on it leaves it as it was, the kept queue walks in the order a fresh sort
gives, and a blocked queue is walked again only for a change that may let a job fit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.capacity import CapacityIndex
from services.scheduler.placement import AgentView, Demand, NodeShape
from services.scheduler.planner import Cluster, PassSettings, plan_pass
from services.scheduler.queue import FairQueue, QueueBook, QueuedJob
from services.scheduler.wakeup import Wake, Wakeups, blocked_after, pass_due

SHAPES = [NodeShape("cpu", "small", Demand(1, 1024)), NodeShape("cpu", "large", Demand(4, 8192)),
          NodeShape("gpu", "h100", Demand(2, 4096, 1), "H100"), NodeShape("gpu", "a10", Demand(2, 4096, 2), "A10")]
AGENT_IDS = [f"a{i}" for i in range(8)]


def agent(agent_id: str, pool: str, cpus: int, gpus: int, model: str) -> AgentView:
    return AgentView(agent_id, f"host-{agent_id}", pool, Demand(cpus, cpus * 2048, gpus), model if gpus else "")


agents_st = st.builds(agent, st.sampled_from(AGENT_IDS), st.sampled_from(["cpu", "gpu"]), st.integers(1, 16),
                      st.integers(0, 4), st.sampled_from(["NVIDIA H100 80GB HBM3", "NVIDIA A10"]))
steps_st = st.lists(st.one_of(
    st.tuples(st.just("live"), agents_st),
    st.tuples(st.just("gone"), st.sampled_from(AGENT_IDS)),
    st.tuples(st.just("take"), st.sampled_from(AGENT_IDS), st.sampled_from(SHAPES)),
    st.tuples(st.just("give"), st.sampled_from(AGENT_IDS), st.sampled_from(SHAPES)),
), max_size=60)


def brute_best(live: dict[str, AgentView], used: dict[str, Demand], shape: NodeShape, strategy: str) -> str | None:
    """Every live agent of the pool looked at: the fitting one with the least free (GPUs, CPUs, id),
    or the most for spread."""
    fitting = []
    for agent_id, a in live.items():
        free = a.capacity - used.get(agent_id, Demand())
        if a.pool == shape.pool and shape.demand.fits_in(free) and a.suits(shape):
            fitting.append((free.gpus, free.cpus, agent_id))
    if not fitting:
        return None
    return (min(fitting) if strategy == "binpack" else max(fitting))[2]


@settings(max_examples=200, deadline=None)
@given(steps=steps_st)
def test_the_capacity_index_agrees_with_a_scan_of_every_agent(steps):
    index = CapacityIndex()
    live: dict[str, AgentView] = {}
    used: dict[str, Demand] = {}  # what placed jobs hold, live agent or not (as the view keeps it)
    for step in steps:
        if step[0] == "live":
            a = step[1]
            index.heard_of(a)
            index.live(a, used.get(a.agent_id, Demand()))
            live[a.agent_id] = a
        elif step[0] == "gone":
            index.gone(step[1])
            live.pop(step[1], None)
        elif step[0] == "take":
            used[step[1]] = used.get(step[1], Demand()) + step[2].demand
            index.taken(step[1], step[2].demand)
        elif step[0] == "give" and step[1] in used:
            used[step[1]] = used[step[1]] - step[2].demand
            index.given(step[1], step[2].demand)
    for shape in SHAPES:
        for strategy in ("binpack", "spread"):
            pool = index.pools.get(shape.pool)
            found = pool.best(shape, strategy) if pool is not None else None  # type: ignore[arg-type]
            assert found == brute_best(live, used, shape, strategy), (shape.flavor, strategy)
    totals = Demand()
    for a in live.values():
        totals = totals + a.capacity
    assert index.totals.gpus == totals.gpus and abs(index.totals.cpus - totals.cpus) < 1e-9
    assert {a for pool in index.pools.values() for a in pool.agents} == set(live)


@settings(max_examples=100, deadline=None)
@given(steps=steps_st, jobs=st.lists(st.tuples(st.sampled_from(SHAPES), st.integers(1, 4)), max_size=12))
def test_a_pass_planned_on_the_index_leaves_it_as_it_was(steps, jobs):
    index = CapacityIndex()
    for step in steps:
        if step[0] == "live":
            index.heard_of(step[1])
            index.live(step[1], Demand())
        elif step[0] == "take":
            index.taken(step[1], step[2].demand)
    before = {pool: (list(p.order), dict(p.free)) for pool, p in index.pools.items()}
    queue = [QueuedJob(f"j{i}", "acct", 0, float(i), 0.0, nodes, shape) for i, (shape, nodes) in enumerate(jobs)]
    used = {agent_id: p.agents[agent_id].capacity - free
            for p in index.pools.values() for agent_id, free in p.free.items()}
    fresh = Cluster([a for p in index.pools.values() for a in p.agents.values()], [], used)
    expected = plan_pass(queue, fresh, {}, now=100.0, settings=PassSettings(reserve_after_s=10.0))
    index.begin()
    try:
        got = plan_pass(queue, index.cluster(), {}, now=100.0, settings=PassSettings(reserve_after_s=10.0))
    finally:
        index.rollback()
    assert [(j.job_id, agents) for j, agents in got.placed] == [(j.job_id, agents) for j, agents in expected.placed]
    assert got.reservations == expected.reservations
    assert {pool: (p.order, p.free) for pool, p in index.pools.items()} == before
    assert all(not p.withheld for p in index.pools.values())


def test_never_fits_is_judged_again_when_an_agent_joins():
    index = CapacityIndex()
    index.heard_of(agent("a", "cpu", 2, 0, ""))
    big = SHAPES[1]  # 4 CPUs
    assert index.cluster().never_fits(big, 1) is not None
    index.heard_of(agent("b", "cpu", 8, 0, ""))
    assert index.cluster().never_fits(big, 1) is None


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "drop"]), st.integers(0, 30)), max_size=80))
def test_the_kept_queue_walks_in_the_order_of_a_fresh_sort(ops):
    book = QueueBook()
    for op, n in ops:
        job_id = f"j{n:02d}"
        if op == "put":  # a job's account, priority and submission never change: derived from its id
            book.put(QueuedJob(job_id, "abc"[n % 3], 5 * (n % 2), float(n % 7), 0.0, 1, SHAPES[0]))
        else:
            book.drop(job_id)
    usage = {"a": 0.1, "b": 0.0}
    assert [j.job_id for j in FairQueue.ordered(book.tiers(), usage)] == [
        j.job_id for j in FairQueue(list(book.jobs.values()), usage)]


def test_a_kept_queue_is_compacted_once_most_of_it_left():
    book = QueueBook()
    for i in range(3000):
        book.put(QueuedJob(f"j{i}", "a", 0, float(i), 0.0, 1, SHAPES[0]))
    for i in range(2990):
        book.drop(f"j{i}")
    assert [j.job_id for j in FairQueue.ordered(book.tiers(), {})] == [f"j{i}" for i in range(2990, 3000)]
    assert sum(len(keys) for accounts in book._lists.values() for keys in accounts.values()) == 10


# ------------------------------------------------------------------------------ wake-ups
def test_a_pass_runs_at_once_unless_the_queue_is_blocked_and_nothing_could_unblock_it():
    assert not pass_due(frozenset(), blocked=False)
    assert pass_due(frozenset({Wake.NEW_JOB}), blocked=False)
    for reason in (Wake.NEW_JOB, Wake.CAPACITY_FREED, Wake.AGENT_JOINED, Wake.QUOTA_CHANGED, Wake.MORE):
        assert pass_due(frozenset({reason}), blocked=True), reason
    assert pass_due(frozenset({Wake.TICK}), blocked=True) and pass_due(frozenset({Wake.LEADERSHIP}), blocked=True)


def test_the_queue_is_blocked_only_after_a_whole_pass_whose_writes_all_landed():
    assert blocked_after(queued=10, more=False, failed_writes=0)
    assert not blocked_after(queued=0, more=False, failed_writes=0), "an empty queue blocks nothing"
    assert not blocked_after(queued=10, more=True, failed_writes=0), "stopped at the batch size: more may fit"
    assert not blocked_after(queued=10, more=False, failed_writes=1), "a failed write is tried again"


def test_wake_ups_during_a_pass_make_one_next_pass():
    wakeups = Wakeups()
    assert wakeups.note(Wake.NEW_JOB), "the first one signals the loop"
    assert not wakeups.note(Wake.NEW_JOB) and not wakeups.note(Wake.CAPACITY_FREED), "the rest pile up"
    assert wakeups.take() == {Wake.NEW_JOB, Wake.CAPACITY_FREED}
    assert wakeups.take() == frozenset() and wakeups.note(Wake.TICK)
