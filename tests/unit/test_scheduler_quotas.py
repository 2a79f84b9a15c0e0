"""Projects (accounts) in a placement pass (services/scheduler/planner.py, quotas.py): quotas keep a
job Pending without blocking other accounts or holding agents back, dedicated pools refuse other
accounts, and a job passed over gets its reason (``PassResult.waiting``) once and only when it changed."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.placement import AgentView, Demand, NodeShape, ShapeCatalog
from services.scheduler.planner import Cluster, PassResult, PassSettings, plan_pass
from services.scheduler.queue import QueuedJob
from services.scheduler.quotas import NOTHING, QuotaBook, Use, quota_block, quota_reason
from trainmaster.catalog import parse_resources
from trainmaster.messages import AccountQuota, Resources

SMALL = NodeShape("cpu", "small", Demand(1, 1024))
LARGE = NodeShape("cpu", "large", Demand(4, 4096))
GPU = NodeShape("gpu", "g1", Demand(2, 2048, 1), "H100")
TEAM = NodeShape("team", "small", Demand(1, 1024), accounts=frozenset({"team-a", "team-b"}))
NOW = 100.0


def agent(agent_id: str, cpus: float = 8, gpus: int = 0, pool: str = "cpu") -> AgentView:
    return AgentView(agent_id, f"host-{agent_id}", pool, Demand(cpus, 32768, gpus), "NVIDIA H100" if gpus else "")


def queued(job_id: str, account: str = "a", shape: NodeShape | None = SMALL, nodes: int = 1, at: float = 0.0,
           pending_since: float | None = None, reason: str | None = None) -> QueuedJob:
    return QueuedJob(job_id, account, 0, at, at if pending_since is None else pending_since, nodes, shape,
                     reason=reason)


def cluster_of(*agents: AgentView, used: Mapping[str, Demand] | None = None) -> Cluster:
    return Cluster(agents, agents, used or {})


def placed_ids(result: PassResult) -> list[str]:
    return [job.job_id for job, _ in result.placed]


def reasons(result: PassResult) -> dict[str, str]:
    return {job.job_id: why for job, why in result.waiting}


# ------------------------------------------------------------------------------ the arithmetic
def test_a_job_goes_over_a_limit_only_where_it_adds_to_it():
    quota = AccountQuota(cpus=4, gpus=1, jobs=2)
    assert quota_block(quota, Use(cpus=3, jobs=1), Use(cpus=1, nodes=1, jobs=1)) is None
    assert quota_block(quota, Use(cpus=3, jobs=1), Use(cpus=2, nodes=1, jobs=1)) == "cpus"
    assert quota_block(quota, Use(gpus=1, jobs=1), Use(gpus=1, jobs=1)) == "gpus"
    assert quota_block(quota, Use(jobs=2), Use(cpus=1, jobs=1)) == "jobs"
    # held over a lowered GPU limit: a job that needs no GPU still starts
    assert quota_block(AccountQuota(gpus=1), Use(gpus=3, jobs=3), Use(cpus=1, nodes=1, jobs=1)) is None
    assert quota_block(AccountQuota(), Use(cpus=1e9, jobs=10**6), Use(cpus=1, jobs=1)) is None
    # fractional CPUs: rounding crumbs do not count
    assert quota_block(AccountQuota(cpus=1), Use(cpus=0.1 + 0.2), Use(cpus=0.7)) is None


def test_the_reason_names_the_limit_and_the_need_not_what_is_held_now():
    quota = AccountQuota(gpus=4, jobs=1)
    assert quota_reason("team-a", quota, "gpus", Use(gpus=2)) == (
        "held by the quota of account team-a: at most 4 GPUs at once (this job needs 2 GPUs)")
    assert quota_reason("team-a", quota, "jobs", Use(jobs=1)) == (
        "held by the quota of account team-a: at most 1 job at once")
    assert quota_reason("team-a", quota, "gpus", Use(gpus=8)) == (
        "the quota of account team-a allows at most 4 GPUs at once and this job needs 8 GPUs: it waits until the "
        "quota is raised")


def test_the_book_counts_what_the_pass_placed():
    book = QuotaBook({"a": AccountQuota(nodes=3)}, {"a": Use(nodes=1, jobs=1)})
    assert book.block("a", Use(nodes=2, jobs=1)) is None
    book.charge("a", Use(nodes=2, jobs=1))
    assert book.use("a") == Use(nodes=3, jobs=2)
    assert book.block("a", Use(nodes=1, jobs=1)) == "nodes"
    assert book.block("b", Use(nodes=100, jobs=1)) is None and book.use("b") == NOTHING


# ------------------------------------------------------------------------------ quotas in a pass
def test_a_job_over_its_accounts_quota_waits_and_does_not_block_other_accounts():
    cluster = cluster_of(agent("x", cpus=8))
    queue = [queued("a1", at=1), queued("a2", at=2), queued("a3", at=3), queued("b1", account="b", at=4)]
    result = plan_pass(queue, cluster, {}, NOW, quotas={"a": AccountQuota(jobs=1)})
    assert sorted(placed_ids(result)) == ["a1", "b1"]
    assert result.impossible == [], "over a quota is not Failed: the account's jobs ending frees room"
    assert reasons(result) == {"a2": "held by the quota of account a: at most 1 job at once",
                               "a3": "held by the quota of account a: at most 1 job at once"}


def test_what_an_account_holds_already_counts():
    cluster = cluster_of(agent("x", cpus=8))
    queue = [queued("a1", shape=LARGE), queued("a2")]
    held = {"a": Use(cpus=6, nodes=2, jobs=2)}
    result = plan_pass(queue, cluster, {}, NOW, quotas={"a": AccountQuota(cpus=8)}, held=held)
    assert placed_ids(result) == ["a2"], "4 more CPUs would be 10 of 8; 1 more is 7"
    assert reasons(result) == {"a1": "held by the quota of account a: at most 8 CPUs at once (this job needs 4 CPUs)"}


def test_a_job_held_by_its_quota_gets_no_reservation_and_does_not_stop_its_twins():
    # a full pool and jobs blocked long past the reservation delay
    cluster = cluster_of(agent("x", cpus=2), agent("y", cpus=2), used={"x": Demand(1, 0)})
    queue = [queued("a1", nodes=2, pending_since=0), queued("b1", account="b", nodes=2, pending_since=50)]
    result = plan_pass(queue, cluster, {}, NOW, PassSettings(reserve_after_s=30),
                       quotas={"a": AccountQuota(nodes=1)})
    assert placed_ids(result) == ["b1"], "the same shape of another account still fits"
    assert result.reservations == {}, "agents held back for a job its quota holds would idle"
    assert "quota" in reasons(result)["a1"]


def test_a_job_of_an_account_over_its_quota_leaves_the_reservation_to_the_next_blocked_job():
    cluster = cluster_of(*(agent(x, cpus=2) for x in "wxyz"), used={x: Demand(2, 0) for x in "wxyz"})
    queue = [queued("a1", nodes=4, pending_since=0), queued("b1", account="b", nodes=4, pending_since=10)]
    result = plan_pass(queue, cluster, {}, NOW, PassSettings(reserve_after_s=30),
                       quotas={"a": AccountQuota(jobs=0)})
    assert list(result.reservations) == ["b1"]
    assert reasons(result)["b1"].endswith("; agents are held back for it")


@st.composite
def passes(draw: st.DrawFn) -> tuple[list[AgentView], list[QueuedJob], dict[str, AccountQuota], dict[str, Use]]:
    agents = [agent(f"c{i}", cpus=draw(st.sampled_from([2, 4, 8]))) for i in range(draw(st.integers(1, 4)))]
    agents += [agent(f"g{i}", cpus=8, gpus=draw(st.integers(1, 4)), pool="gpu") for i in range(draw(st.integers(0, 2)))]
    accounts = st.sampled_from(["a", "b", "c"])
    jobs = [queued(f"j{i}", account=draw(accounts), shape=draw(st.sampled_from([SMALL, LARGE, GPU])),
                   nodes=draw(st.integers(1, 3)), at=float(i), pending_since=draw(st.sampled_from([0.0, 99.0])))
            for i in range(draw(st.integers(0, 25)))]
    limit = st.none() | st.integers(0, 12)
    quotas = {account: AccountQuota(cpus=draw(limit), gpus=draw(limit), nodes=draw(limit), jobs=draw(limit))
              for account in draw(st.sets(accounts))}
    held = {account: Use(cpus=float(draw(st.integers(0, 14))), gpus=draw(st.integers(0, 6)),
                         nodes=draw(st.integers(0, 8)), jobs=draw(st.integers(0, 5)))
            for account in draw(st.sets(accounts))}
    return agents, jobs, quotas, held


@settings(max_examples=300, deadline=None)
@given(case=passes(), reserve_after_s=st.sampled_from([0.0, 30.0]))
def test_after_any_pass_no_account_holds_more_than_its_quota_unless_it_did_before(case, reserve_after_s):
    agents, jobs, quotas, held = case
    result = plan_pass(jobs, cluster_of(*agents), {}, NOW,
                       PassSettings(reserve_after_s=reserve_after_s, explain_after_s=0, max_reasons=1000),
                       quotas=quotas, held=held)
    after = dict(held)
    for job, _ in result.placed:
        assert job.shape is not None
        after[job.account] = after.get(job.account, NOTHING) + Use.of(job.shape.demand, job.node_count)
    for account, quota in quotas.items():
        before, now = held.get(account, NOTHING), after.get(account, NOTHING)
        for limit in ("cpus", "gpus", "nodes", "jobs"):
            most = getattr(quota, limit)
            if most is None:
                continue
            if getattr(before, limit) <= most:
                assert getattr(now, limit) <= most + 1e-6, (account, limit, before, now)
            elif limit != "jobs":  # over a lowered limit: no job that adds to it starts
                assert getattr(now, limit) == getattr(before, limit), (account, limit, before, now)
    # every job is placed, refused (never fits) or told why it waits: exactly one of them
    outcomes = ([job.job_id for job, _ in result.placed] + [job.job_id for job, _ in result.impossible]
                + [job.job_id for job, _ in result.waiting])
    assert sorted(outcomes) == sorted(job.job_id for job in jobs)
    why = reasons(result)
    for job_id in result.reservations:  # held back for a job short of capacity, never for one its quota holds
        assert why[job_id].startswith("waiting for capacity") and why[job_id].endswith("held back for it")


# ------------------------------------------------------------------------------ dedicated pools
def test_a_job_of_an_account_a_dedicated_pool_does_not_admit_is_refused():
    cluster = cluster_of(agent("t", pool="team"))
    queue = [queued("outsider", account="c", shape=TEAM), queued("insider", account="team-b", shape=TEAM)]
    for judge in (True, False):  # the catalog's verdict: even right after a start
        result = plan_pass(queue, cluster_of(agent("t", pool="team")), {}, NOW,
                           PassSettings(judge_impossible=judge))
        assert [(job.job_id, why) for job, why in result.impossible] == [
            ("outsider", "pool 'team' is dedicated to team-a, team-b; account c may not use it")]
        assert placed_ids(result) == ["insider"]
    assert cluster.pools["team"].free["t"] == Demand(8, 32768)


def test_the_shapes_carry_the_pools_accounts_from_the_catalog():
    catalog = parse_resources("""
pools:
  - name: open
    flavors: [{name: s, cpus: 1, memory_mb: 512, price_per_hour: 0}]
  - name: team
    kind: dedicated
    accounts: [team-a]
    flavors: [{name: s, cpus: 1, memory_mb: 512, price_per_hour: 0}]
""")
    shapes = ShapeCatalog(catalog)
    team = shapes.shape(Resources(pool="team"))
    assert isinstance(team, NodeShape) and team.accounts == frozenset({"team-a"})
    assert team.refusal("team-a") is None and team.refusal("other") is not None
    open_ = shapes.shape(Resources(pool="open"))
    assert isinstance(open_, NodeShape) and open_.accounts is None and open_.refusal("anyone") is None


# ------------------------------------------------------------------------------ reasons
def test_a_job_passed_over_gets_its_reason_once_it_has_waited_a_while():
    cluster = cluster_of(agent("x", cpus=8), agent("g", cpus=8, gpus=1, pool="gpu"), used={"x": Demand(8, 0)})
    queue = [queued("fresh", pending_since=NOW - 1), queued("old", pending_since=NOW - 5),
             queued("twin", pending_since=NOW - 5, at=1), queued("big", shape=LARGE, nodes=2, pending_since=0),
             queued("nogpu", shape=NodeShape("tpu", "t", Demand(1, 0)), pending_since=0)]
    result = plan_pass(queue, cluster, {}, NOW, PassSettings(explain_after_s=2, reserve_after_s=1000))
    capacity = "waiting for capacity in pool cpu: 1 node(s) of flavor small (1 CPUs, 1024 MiB)"
    assert reasons(result) == {
        "old": capacity, "twin": capacity,
        "big": "waiting for capacity in pool cpu: 2 node(s) of flavor large (4 CPUs, 4096 MiB)",
        "nogpu": "waiting for an agent of pool tpu: none is up",
    }, "a job pending for a second only is left alone: most short waits end by themselves"


def test_a_reason_is_written_only_when_it_changed_and_a_few_a_pass():
    cluster = cluster_of(agent("x", cpus=1), used={"x": Demand(1, 0)})
    capacity = "waiting for capacity in pool cpu: 1 node(s) of flavor small (1 CPUs, 1024 MiB)"
    said = [queued(f"s{i}", at=i, reason=capacity) for i in range(5)]
    unsaid = [queued(f"u{i}", at=10 + i, reason="held by the quota of account a: at most 1 job at once")
              for i in range(5)]
    result = plan_pass(said + unsaid, cluster, {}, NOW, PassSettings(max_reasons=3, reserve_after_s=1000))
    assert reasons(result) == {"u0": capacity, "u1": capacity, "u2": capacity}
    assert plan_pass(said, cluster_of(agent("x", cpus=1), used={"x": Demand(1, 0)}), {}, NOW,
                     PassSettings(reserve_after_s=1000)).waiting == []
    none = plan_pass(unsaid, cluster_of(agent("x", cpus=1), used={"x": Demand(1, 0)}), {}, NOW,
                     PassSettings(max_reasons=0, reserve_after_s=1000))
    assert none.waiting == []


@pytest.mark.parametrize("quota", [AccountQuota(jobs=1), None])
def test_a_placed_job_needs_no_reason(quota):
    quotas = {"a": quota} if quota else {}
    result = plan_pass([queued("a1", reason="old news")], cluster_of(agent("x")), {}, NOW, quotas=quotas)
    assert placed_ids(result) == ["a1"] and result.waiting == []
