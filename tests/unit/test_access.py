"""Who may do what: the caller of a request and the role checks, as plain functions."""

from __future__ import annotations

import json

import pytest

from trainmaster import access
from trainmaster.access import CLUSTER_ADMIN, Caller, Credential, Denied, Role, UserRecord
from trainmaster.identity import Directory, token_hash

ALICE = UserRecord("alice", 1.0, roles={"team-a": "member", "team-b": "viewer"},
                   credentials=[Credential("c1", "nats", 1.0, public_key="UALICE"),
                                Credential("c2", "nats", 1.0, public_key="UOLD", revoked_at=2.0),
                                Credential("t1", "token", 1.0, token_hash="abc")])
GONE = UserRecord("gone", 1.0, roles={"team-a": "admin"}, disabled_at=3.0,
                  credentials=[Credential("c3", "nats", 1.0, public_key="UGONE")])
KEYS = access.keys_of([ALICE, GONE])


def test_a_request_from_inside_the_services_account_is_the_cluster_admin() -> None:
    assert access.caller_of(None, KEYS) is CLUSTER_ADMIN
    assert CLUSTER_ADMIN.may("anything", Role.ADMIN) and CLUSTER_ADMIN.projects() is None


def test_a_person_is_found_by_the_key_the_server_names() -> None:
    caller = access.caller_of({"acc": "AUSERS", "user": "UALICE", "name_tag": "mallory"}, KEYS)
    assert caller == Caller("alice", {"team-a": Role.MEMBER, "team-b": Role.VIEWER}, credential="c1")
    assert caller.actor == "user/alice"  # the name is the record's, not the JWT's name tag
    assert caller.projects() == {"team-a", "team-b"} and caller.projects(Role.MEMBER) == {"team-a"}


@pytest.mark.parametrize("info", [{"user": "UOLD"}, {"user": "UGONE"}, {"user": "UNOBODY"}, {}, {"user": 7}])
def test_revoked_disabled_and_unknown_keys_are_refused(info: dict) -> None:
    with pytest.raises(Denied) as refused:
        access.caller_of(info, KEYS)
    assert refused.value.code == "unauthorized"
    assert "trainmaster user issue" in refused.value.message


def test_an_unreadable_request_info_is_nobody() -> None:
    assert access.request_info(None) is None
    assert access.request_info("not json") == {} and access.request_info("[1]") == {}
    assert access.request_info(json.dumps({"user": "UALICE"})) == {"user": "UALICE"}


@pytest.mark.parametrize(("project", "need", "allowed"), [
    ("team-a", Role.VIEWER, True), ("team-a", Role.MEMBER, True), ("team-a", Role.ADMIN, False),
    ("team-b", Role.VIEWER, True), ("team-b", Role.MEMBER, False), ("team-c", Role.VIEWER, False),
])
def test_roles_are_ordered_viewer_member_admin(project: str, need: Role, allowed: bool) -> None:
    alice = access.caller_of({"user": "UALICE"}, KEYS)
    assert alice.may(project, need) is allowed


def test_a_refusal_says_which_role_it_takes_and_which_projects_the_caller_has() -> None:
    alice = access.caller_of({"user": "UALICE"}, KEYS)
    access.require(alice, "team-a", Role.MEMBER, "stopping a job")
    with pytest.raises(Denied, match="you are viewer of project 'team-b': stopping a job takes member"):
        access.require(alice, "team-b", Role.MEMBER, "stopping a job")
    with pytest.raises(Denied, match=r"not a member of project 'team-c' \(your projects: team-a, team-b\)"):
        access.require(alice, "team-c", Role.VIEWER, "reading a job")
    with pytest.raises(Denied, match="for the cluster admin only"):
        access.require_cluster_admin(alice, "crediting a project")
    access.require_cluster_admin(CLUSTER_ADMIN, "crediting a project")


def test_tokens_are_found_by_their_hash_only() -> None:
    assert set(access.tokens_of([ALICE, GONE])) == {"abc"}
    assert Role.parse("Member") is Role.MEMBER
    with pytest.raises(ValueError, match="use viewer, member or admin"):
        Role.parse("owner")


# ---------------------------------------------------------------- asking for an API token's user
def directory_of(*users: UserRecord) -> Directory:
    directory = Directory(None)  # type: ignore[arg-type]  # a known set of users: no bucket needed
    for user in users:
        directory.put(user)
    return directory


TOKENED = UserRecord("tina", 1.0, roles={"team-a": "viewer"},
                     credentials=[Credential("t1", "token", 1.0, token_hash=token_hash("tmu_tina")),
                                  Credential("t2", "token", 1.0, token_hash=token_hash("tmu_old"), revoked_at=2.0)])


def test_the_services_account_asking_with_a_token_is_that_tokens_user() -> None:
    caller = directory_of(TOKENED, ALICE).caller({access.ON_BEHALF: "tmu_tina"})
    assert caller.name == "tina" and not caller.cluster_admin and caller.credential == "t1"
    assert caller.may("team-a", Role.VIEWER) and not caller.may("team-a", Role.MEMBER)


@pytest.mark.parametrize("token", ["tmu_old", "tmu_nobody", ""])
def test_a_revoked_or_unknown_token_narrows_to_nobody(token: str) -> None:
    with pytest.raises(Denied) as refused:
        directory_of(TOKENED).caller({access.ON_BEHALF: token})
    assert refused.value.code == "unauthorized"


def test_a_token_header_from_the_peoples_account_is_ignored() -> None:
    # a person cannot become another by naming its token: the server's Nats-Request-Info wins
    info = json.dumps({"acc": "AUSERS", "user": "UALICE"})
    caller = directory_of(TOKENED, ALICE).caller({access.REQUEST_INFO: info, access.ON_BEHALF: "tmu_tina"})
    assert caller.name == "alice"
    with pytest.raises(Denied):  # a revoked key stays revoked, whatever token comes with it
        directory_of(TOKENED, ALICE).caller({access.REQUEST_INFO: json.dumps({"user": "UOLD"}),
                                             access.ON_BEHALF: "tmu_tina"})


def test_without_a_token_the_services_account_is_the_cluster_admin() -> None:
    assert directory_of(TOKENED).caller({}) is CLUSTER_ADMIN
    assert directory_of(TOKENED).caller(None) is CLUSTER_ADMIN
