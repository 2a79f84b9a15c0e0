"""Who may call which of job-intake's verbs: the plain decisions over a caller and the project of
what it asks about (jobs listed by account, the account a job goes to, templates saved over, the
audit entries it reads), and the request claims that keep one person's request ids its own."""

from __future__ import annotations

import msgspec
import pytest

from services.job_intake.core import claim_key, request_key, select
from services.job_intake.policy import (
    audit_scope,
    only_visible,
    require_job_account,
    require_save_as,
    visible,
)
from trainmaster.access import CLUSTER_ADMIN, Caller, Denied, Role
from trainmaster.messages import Dataset, JobSummary, ListRequest, Status

ALICE = Caller("alice", {"team-a": Role.MEMBER})
VICTOR = Caller("victor", {"team-a": Role.VIEWER})
BOB = Caller("bob", {"team-b": Role.MEMBER})
ANNA = Caller("anna", {"team-a": Role.ADMIN, "team-b": Role.VIEWER})


def job(job_id: str, at: float, status: Status = Status.PENDING) -> JobSummary:
    return JobSummary(id=job_id, name="n", version="V001", status=status, created_at=at, updated_at=at)


JOBS = [job("a1", 1.0), job("b1", 2.0), job("a2", 3.0, Status.FAILED), job("d1", 4.0)]
OWNERS = {"a1": "team-a", "a2": "team-a", "b1": "team-b", "d1": "default"}


def test_a_list_holds_only_the_jobs_of_the_callers_projects_and_counts_only_those() -> None:
    page, total = select(JOBS, ListRequest(limit=1), OWNERS, VICTOR.projects(Role.VIEWER))
    assert [j.id for j in page] == ["a2"] and total == 2
    page, total = select(JOBS, ListRequest(status=Status.PENDING), OWNERS, BOB.projects(Role.VIEWER))
    assert [j.id for j in page] == ["b1"] and total == 1
    assert select(JOBS, ListRequest(), OWNERS, frozenset())[1] == 0  # a person of no project sees none


def test_the_cluster_admin_lists_every_job() -> None:
    page, total = select(JOBS, ListRequest(), OWNERS, CLUSTER_ADMIN.projects(Role.VIEWER))
    assert [j.id for j in page] == ["d1", "a2", "b1", "a1"] and total == 4
    assert select(JOBS, ListRequest())[1] == 4


def test_visibility_starts_at_viewer() -> None:
    assert visible(VICTOR, "team-a") and not visible(BOB, "team-a") and visible(CLUSTER_ADMIN, "team-a")
    datasets = [Dataset("x", "/x", 1.0, 1.0, project="team-a"), Dataset("y", "/y", 1.0, 1.0)]
    assert [d.name for d in only_visible(VICTOR, datasets, lambda d: d.project)] == ["x"]
    assert only_visible(BOB, datasets, lambda d: d.project) == []
    assert only_visible(CLUSTER_ADMIN, datasets, lambda d: d.project) == datasets


def test_an_old_dataset_record_without_a_project_belongs_to_default() -> None:
    old = msgspec.json.decode(b'{"name": "x", "location": "/x", "created_at": 1, "updated_at": 1}', type=Dataset)
    assert old.project == "default"


def test_a_job_goes_only_to_a_project_the_caller_is_a_member_of() -> None:
    require_job_account(ALICE, "team-a")
    require_job_account(CLUSTER_ADMIN, "anything")
    with pytest.raises(Denied) as bob:
        require_job_account(BOB, "team-a")
    assert bob.value.code == "forbidden" and bob.value.field == "account"
    assert "not a member of project 'team-a'" in bob.value.message
    with pytest.raises(Denied) as victor:
        require_job_account(VICTOR, "team-a")
    assert "you are viewer of project 'team-a'" in victor.value.message


def test_a_spec_without_an_account_is_told_to_name_one_of_the_callers_projects() -> None:
    with pytest.raises(Denied) as refused:
        require_job_account(ANNA, "default")
    assert refused.value.code == "forbidden" and refused.value.field == "account"
    assert "set `account` to one of your projects (team-a)" in refused.value.message
    with pytest.raises(Denied) as nowhere:
        require_job_account(Caller("nobody"), "default")
    assert "none: ask an admin" in nowhere.value.message
    require_job_account(Caller("d", {"default": Role.MEMBER}), "default")


def test_save_as_replaces_only_a_template_the_caller_may_change() -> None:
    require_save_as(BOB, "fresh", None)
    require_save_as(BOB, "mine", "team-b")
    for caller in (BOB, VICTOR):
        with pytest.raises(Denied) as refused:
            require_save_as(caller, "theirs", "team-a")
        assert refused.value.field == "save_as.name" and "team-a" not in refused.value.message


def test_the_audit_trail_a_caller_reads() -> None:
    assert audit_scope(CLUSTER_ADMIN, None) is None
    assert audit_scope(CLUSTER_ADMIN, "@cluster") is None
    assert audit_scope(ANNA, "team-a") is None  # that project's entries (the read filters by subject)
    assert audit_scope(ANNA, None) == {"team-a"}  # only the projects it administers
    assert audit_scope(BOB, None) == frozenset()
    for caller, project in ((BOB, "team-a"), (ALICE, "team-a"), (ANNA, "team-b"), (ANNA, "@cluster")):
        with pytest.raises(Denied) as refused:
            audit_scope(caller, project)
        assert refused.value.code == "forbidden"
    with pytest.raises(Denied) as member:
        audit_scope(ALICE, "team-a")
    assert member.value.field == "project" and "takes admin" in member.value.message


def test_a_persons_request_ids_are_its_own() -> None:
    assert claim_key("req-1", None) == request_key("req-1")  # the cluster admin's claims are unchanged
    assert claim_key("req-1", "user/bob") != claim_key("req-1", "user/alice") != request_key("req-1")
    assert claim_key("req-1", "user/bob") == claim_key("req-1", "user/bob")
