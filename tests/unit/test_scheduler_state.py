"""The scheduler's memory (view.py), lost agents and timeouts (reconcile.py), and the leader
lease (lease.py) against an in-memory key-value bucket with compare-and-set and a fake clock."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from services.scheduler.lease import LeaderLease
from services.scheduler.placement import Demand, ShapeCatalog
from services.scheduler.quotas import Use
from services.scheduler.reconcile import agents_to_cancel, run_deadline, running_since, silent_agents, timed_out
from services.scheduler.view import SchedulerView
from services.scheduler.wakeup import Wake
from trainmaster.catalog import parse_resources
from trainmaster.messages import (
    AccountQuota,
    AgentHeartbeat,
    AgentLost,
    JobRecord,
    JobRequest,
    NodeExited,
    NodeRunning,
    Placed,
    Placement,
    Resources,
    RetryPolicy,
    Validated,
    Waiting,
)
from trainmaster.statemachine import new_record, transition

CATALOG = parse_resources("""
pools:
  - name: cpu
    flavors:
      - {name: small, cpus: 1, memory_mb: 1024, price_per_hour: 0}
      - {name: large, cpus: 4, memory_mb: 4096, price_per_hour: 0}
""")
T0 = 1_000.0


def pending(job_id: str, nodes: int = 1, flavor: str | None = None, account: str = "a",
            max_run_time_s: float | None = None, max_retries: int = 0) -> JobRecord:
    spec = JobRequest(name="j", resources=Resources(pool="cpu", node_count=nodes, flavor=flavor), account=account,
                      max_run_time_s=max_run_time_s, retry=RetryPolicy(max_retries=max_retries))
    record = new_record(job_id=job_id, name="j", version="V001", spec=spec, request_id=job_id, now=T0)
    return transition(record, Validated("v"), T0)


def placed(record: JobRecord, agents: list[str], at: float = T0 + 1) -> JobRecord:
    attempt = record.attempt + 1
    placements = [Placement(node=i, agent_id=a, host=a) for i, a in enumerate(agents)]
    return transition(record, Placed(f"p{attempt}", attempt=attempt, placements=placements), at)


def heartbeat(agent_id: str, cpus: int = 8) -> AgentHeartbeat:
    return AgentHeartbeat(agent_id, f"host-{agent_id}", "cpu", {}, cpus, 16384, [], [], 0.0, 0.0)


# ------------------------------------------------------------------------------ view: capacity ledger
def test_the_view_holds_capacity_while_placed_and_releases_it_at_the_end():
    view = SchedulerView(ShapeCatalog(CATALOG), agent_timeout_s=15, started_at=T0)
    record = pending("j1", nodes=2, flavor="large")
    assert view.remember(record, 1) and set(view.queued) == {"j1"}
    record = placed(record, ["a", "b"])
    view.remember(record, 2)
    assert view.used == {"a": Demand(4, 4096), "b": Demand(4, 4096)} and not view.queued
    assert view.account_used == {"a": Demand(8, 8192)}
    assert not view.remember(record, 2), "the same revision again changes nothing"
    done = transition(transition(record, NodeExited("e0", attempt=1, node=0, exit_code=0), T0 + 2),
                      NodeExited("e1", attempt=1, node=1, exit_code=0), T0 + 3)
    view.remember(done, 4)
    assert view.used == {} and view.account_used == {} and view.records == {}
    # an ended job is forgotten, so a late copy of an older revision is taken in again; the watch
    # delivers every revision in order, so the newer one follows it and sets things right
    view.remember(record, 3)
    view.remember(done, 4)
    assert view.used == {} and view.records == {}


def test_the_view_says_which_changes_may_let_a_blocked_job_fit():
    view = SchedulerView(ShapeCatalog(CATALOG), agent_timeout_s=15, started_at=T0)
    view.heard(heartbeat("a"), T0)
    record = pending("j1")
    assert view.remember(record, 1) is Wake.NEW_JOB
    record = placed(record, ["a"])
    assert view.remember(record, 2) is None, "placed: it took capacity, it freed none"
    record = transition(record, NodeRunning("r0", attempt=1, node=0), T0 + 2)
    assert view.remember(record, 3) is None, "running: the same capacity held"
    assert view.capacity.pools["cpu"].free["a"] == Demand(8 - 1, 16384 - 1024)
    record = transition(record, NodeExited("e0", attempt=1, node=0, exit_code=0), T0 + 3)
    assert view.remember(record, 4) is Wake.CAPACITY_FREED
    assert view.capacity.pools["cpu"].free["a"] == Demand(8, 16384)
    view.mark_lost("a")
    assert "cpu" not in view.capacity.pools, "a lost agent takes no node"
    assert view.heard(heartbeat("a"), T0 + 20) == "returned" and "a" in view.capacity.pools["cpu"].agents


records = st.sampled_from(["j1", "j2", "j3"])
agents = st.sampled_from(["a", "b", "c"])


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(records, st.sampled_from(["pending", "place", "run", "retry", "end"]),
                                st.lists(agents, min_size=1, max_size=3)), max_size=40))
def test_the_incremental_ledger_always_equals_a_recount(steps):
    view = SchedulerView(ShapeCatalog(CATALOG), agent_timeout_s=15, started_at=T0)
    current: dict[str, JobRecord] = {}
    revision = 0
    for job_id, action, where in steps:
        record = current.get(job_id)
        try:
            if action == "pending" and record is None:
                record = pending(job_id, nodes=len(where), account=job_id[-1], max_retries=10)
            elif action == "place" and record is not None:
                record = placed(record, where)
            elif action == "run" and record is not None:
                record = transition(record, NodeRunning(f"r{revision}", attempt=record.attempt, node=0), T0 + 5)
            elif action == "retry" and record is not None:  # its first node's agent lost: placed again later
                lost = AgentLost(f"q{revision}", attempt=record.attempt, agent_id=record.placements[0].agent_id)
                record = transition(record, lost, T0 + 5)
            elif action == "end" and record is not None:
                record = transition(record, NodeExited(f"e{revision}", attempt=record.attempt, node=0, exit_code=1),
                                    T0 + 5)
            else:
                continue
        except Exception:
            continue
        revision += 1
        current[job_id] = record
        view.remember(record, revision)
    expected: dict[str, Demand] = {}
    for record in current.values():
        if record.status.value in ("Scheduled", "Running", "Stopping"):
            for p in record.placements:
                expected[p.agent_id] = expected.get(p.agent_id, Demand()) + Demand(1, 1024)
    assert view.used == expected
    assert set(view.queued) == {j for j, r in current.items() if r.status.value == "Pending"}
    # what each account holds, as its quota counts it: CPUs, GPUs, nodes and jobs
    by_account: dict[str, Use] = {}
    for record in current.values():
        if record.status.value in ("Scheduled", "Running", "Stopping"):
            held = Use.of(Demand(1, 1024), len(record.placements))
            by_account[record.spec.account] = by_account.get(record.spec.account, Use()) + held
    assert view.account_use == by_account


def test_the_view_keeps_each_jobs_reason_to_wait_and_the_accounts_quotas():
    view = SchedulerView(ShapeCatalog(CATALOG), agent_timeout_s=15, started_at=T0)
    record = pending("j1")
    view.remember(record, 1)
    assert view.queued["j1"].reason is None
    waiting = transition(record, Waiting("waiting", reason="held by the quota of account a"), T0 + 5)
    assert not view.remember(waiting, 2), "a reason is no change of state: no new pass for it"
    assert view.queued["j1"].reason == "held by the quota of account a"
    assert view.queued["j1"].pending_since == T0, "its wait counts from when it became Pending"
    assert view.set_quota("a", AccountQuota(jobs=1)) and not view.set_quota("a", AccountQuota(jobs=1))
    assert view.set_quota("a", AccountQuota(jobs=2)) and view.quotas == {"a": AccountQuota(jobs=2)}
    assert view.set_quota("a", None) and view.quotas == {} and not view.set_quota("b", None)


def test_agents_are_registered_lost_and_returned():
    view = SchedulerView(ShapeCatalog(CATALOG), agent_timeout_s=10, started_at=T0)
    assert view.heard(heartbeat("a"), T0) == "registered"
    assert view.heard(heartbeat("a"), T0 + 1) is None
    view.remember(placed(pending("j"), ["ghost"]), 1)  # placed by a previous scheduler, never heard from
    assert view.newly_lost(T0 + 5) == []
    assert view.newly_lost(T0 + 12) == ["a", "ghost"]
    view.lost.update({"a", "ghost"})
    assert [r.id for r in view.jobs_on("ghost")] == ["j"]
    assert not view.alive("a", T0 + 12) and [a.agent_id for a in view.cluster(T0 + 12).known["cpu"]] == ["a"]
    assert view.heard(heartbeat("a"), T0 + 13) == "returned" and view.alive("a", T0 + 13)


def test_a_grace_gives_every_agent_a_fresh_timeout():
    view = SchedulerView(ShapeCatalog(CATALOG), agent_timeout_s=10, started_at=T0)
    view.heard(heartbeat("a"), T0)
    view.remember(placed(pending("j"), ["b"]), 1)
    view.grace(T0 + 30)  # the scheduler itself could not listen from T0 to T0 + 30
    assert view.newly_lost(T0 + 35) == []
    assert view.newly_lost(T0 + 41) == ["a", "b"]


# ------------------------------------------------------------------------------ reconcile
def test_silent_agents():
    assert silent_agents(["a", "b", "c"], {"a": 100.0, "b": 95.0}, now=110, timeout_s=10, default_seen=101) == ["b"]


def test_the_run_time_counts_from_when_the_attempt_started_running():
    record = placed(pending("j", max_run_time_s=60, max_retries=1), ["a"], at=T0 + 10)
    assert run_deadline(record) is None, "placed, not running yet"
    record = transition(record, NodeRunning("r", attempt=1, node=0), T0 + 30)
    assert running_since(record) == T0 + 30 and run_deadline(record) == T0 + 90
    assert not timed_out(record, T0 + 89) and timed_out(record, T0 + 90)
    # a retry starts the clock anew
    retried = placed(transition(record, AgentLost("q", attempt=1, agent_id="a"), T0 + 40), ["b"], at=T0 + 200)
    retried = transition(retried, NodeRunning("r2", attempt=2, node=0), T0 + 210)
    assert run_deadline(retried) == T0 + 270
    assert run_deadline(placed(pending("k"), ["a"])) is None, "no limit, no deadline"


def test_agents_to_cancel_are_those_with_nodes_still_running():
    record = placed(pending("j", nodes=3), ["a", "b", "b"])
    record = transition(record, NodeExited("e", attempt=1, node=0, exit_code=0), T0 + 2)
    assert agents_to_cancel(record) == ["b"]
    assert agents_to_cancel(record, except_node=1) == ["b"]


# ------------------------------------------------------------------------------ the lease
class MemoryKV:
    """The compare-and-set behaviour of a JetStream KV bucket, for one key."""

    def __init__(self) -> None:
        self.revision = 0
        self.value: bytes | None = None

    async def get(self, key: str):
        if self.value is None:
            raise KeyNotFoundError
        return SimpleNamespace(value=self.value, revision=self.revision)

    async def create(self, key: str, value: bytes) -> int:
        if self.value is not None:
            raise KeyWrongLastSequenceError
        return self._write(value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        if last != self.revision:
            raise KeyWrongLastSequenceError
        return self._write(value)

    async def delete(self, key: str, last: int | None = None) -> None:
        if last != self.revision:
            raise KeyWrongLastSequenceError
        self.revision += 1
        self.value = None

    def _write(self, value: bytes) -> int:
        self.revision += 1
        self.value = value
        return self.revision


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def test_one_replica_leads_and_the_other_takes_over_only_after_the_lease_ran_out():
    kv, clock = MemoryKV(), Clock()
    a = LeaderLease(kv, "a", lease_s=10, clock=clock)  # type: ignore[arg-type]
    b = LeaderLease(kv, "b", lease_s=10, clock=clock)  # type: ignore[arg-type]
    run(a.step())
    run(b.step())
    assert a.is_leader() and not b.is_leader()
    for _ in range(8):  # a renews every 2.5 s: b never takes over
        clock.now += 2.5
        run(a.step())
        run(b.step())
        assert a.is_leader() and not b.is_leader()
    last_renewal = clock.now
    # a stops renewing (paused, partitioned, dead): it stops acting before b may take over
    while not b.is_leader():
        clock.now += 0.5
        run(b.step())
        assert not (a.is_leader() and b.is_leader()), "never two leaders at one time"
        assert clock.now < last_renewal + 30
    assert clock.now >= last_renewal + 10, "b waited the whole lease"
    assert not a.is_leader() and b.term == a.term + 1
    run(a.step())  # a comes back: its renewal fails on the revision b wrote
    assert not a.is_leader() and a.revision is None
    run(a.step())
    assert not a.is_leader()


def test_a_released_lease_is_taken_at_once():
    kv, clock = MemoryKV(), Clock()
    a = LeaderLease(kv, "a", lease_s=10, clock=clock)  # type: ignore[arg-type]
    b = LeaderLease(kv, "b", lease_s=10, clock=clock)  # type: ignore[arg-type]
    run(a.step())
    run(a.release())
    assert not a.is_leader()
    run(b.step())
    assert b.is_leader()


@pytest.mark.parametrize("lease_s", [1.0, 10.0])
def test_the_leader_stops_acting_before_the_lease_runs_out(lease_s):
    kv, clock = MemoryKV(), Clock()
    a = LeaderLease(kv, "a", lease_s=lease_s, clock=clock)  # type: ignore[arg-type]
    run(a.step())
    clock.now += lease_s * 0.79
    assert a.is_leader()
    clock.now += lease_s * 0.02
    assert not a.is_leader()
