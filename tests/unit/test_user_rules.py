"""Who may create, grant, issue, revoke and see whom; the records each change leaves; the users
signer's file.  Plain functions, no bus."""

from __future__ import annotations

import msgspec
import pytest

from services.job_intake.users import Users
from trainmaster import user_rules
from trainmaster.access import CLUSTER_ADMIN, Caller, Credential, Denied, Role, UserRecord
from trainmaster.auth import permissions
from trainmaster.auth.authority import Authority
from trainmaster.auth.credentials import inbox_options, person_inbox
from trainmaster.auth.jwt import creds_text, decode
from trainmaster.auth.nkeys import KeyKind, KeyPair
from trainmaster.auth.users_signer import InvalidSigner, parse_signer, signer_of
from trainmaster.decoding import RequestError, decode_as
from trainmaster.identity import Directory, token_hash
from trainmaster.user_messages import UserCreate, UserGrant

ALICE = UserRecord("alice", 1.0, roles={"team-a": "member", "team-b": "viewer"},
                   credentials=[Credential("c1", "nats", 1.0, public_key="UALICE"),
                                Credential("t1", "token", 1.0, token_hash="secret-hash")])
ADMIN_A = Caller("ada", {"team-a": Role.ADMIN, "team-b": Role.MEMBER})
MEMBER = Caller("alice", {"team-a": Role.MEMBER, "team-b": Role.VIEWER}, credential="c1")
STRANGER = Caller("bob", {"team-c": Role.ADMIN})


def code_of(exc: pytest.ExceptionInfo) -> str:
    value = exc.value
    return value.code if isinstance(value, Denied) else value.body.code


# ---------------------------------------------------------------- who may
def test_users_of_a_project_are_made_and_changed_by_its_admins_and_the_cluster_admin() -> None:
    user_rules.check_manage(CLUSTER_ADMIN, "anything", "adding users to it")
    user_rules.check_manage(ADMIN_A, "team-a", "adding users to it")
    for caller, project in ((ADMIN_A, "team-b"), (MEMBER, "team-a"), (STRANGER, "team-a")):
        with pytest.raises(Denied) as refused:
            user_rules.check_manage(caller, project, "adding users to it")
        assert refused.value.code == "forbidden" and refused.value.field == "project"


def test_credentials_are_issued_to_oneself_or_by_the_cluster_admin() -> None:
    user_rules.check_issue(CLUSTER_ADMIN, "alice")
    user_rules.check_issue(MEMBER, "alice")
    with pytest.raises(Denied, match="yourself only"):
        user_rules.check_issue(ADMIN_A, "alice")  # a project admin does not mint others' identities


def test_one_credential_is_revoked_by_its_user_a_whole_user_by_the_cluster_admin() -> None:
    user_rules.check_revoke(MEMBER, "alice", "c1")
    user_rules.check_revoke(CLUSTER_ADMIN, "alice", "c1")
    user_rules.check_revoke(CLUSTER_ADMIN, "alice", None)
    with pytest.raises(Denied, match="cluster admin only"):
        user_rules.check_revoke(MEMBER, "alice", None)
    with pytest.raises(Denied, match="your own"):
        user_rules.check_revoke(ADMIN_A, "alice", "c1")


def test_public_keys_must_be_user_keys_and_belong_to_one_credential() -> None:
    user = KeyPair.generate(KeyKind.USER).public_key
    assert user_rules.public_key_violation(user) is None
    for bad in (KeyPair.generate(KeyKind.ACCOUNT).public_key, "U" + "A" * 55, "nonsense"):
        violation = user_rules.public_key_violation(bad)
        assert violation is not None and violation.body.details[0].field == "public_key"
    user_rules.check_key_free(user, [ALICE])
    with pytest.raises(RequestError) as taken:
        user_rules.check_key_free("UALICE", [ALICE])
    assert taken.value.body.code == "conflict"


# ---------------------------------------------------------------- who sees what
def test_a_user_is_seen_whole_by_itself_and_the_cluster_admin_in_part_by_its_project_admins() -> None:
    assert user_rules.visible_roles(CLUSTER_ADMIN, ALICE) == ALICE.roles
    assert user_rules.visible_roles(MEMBER, ALICE) == ALICE.roles
    assert user_rules.visible_roles(ADMIN_A, ALICE) == {"team-a": "member"}
    assert user_rules.visible_roles(STRANGER, ALICE) is None


def test_a_view_never_shows_a_token_hash() -> None:
    shown = msgspec.json.encode(user_rules.view(ALICE, ALICE.roles))
    assert b"secret-hash" not in shown and b"token_hash" not in shown
    assert [c.id for c in user_rules.view(ALICE, {}).credentials] == ["c1", "t1"]


def test_a_user_one_may_not_see_is_not_found_like_a_missing_one() -> None:
    with pytest.raises(RequestError) as hidden:
        user_rules.seen_by(STRANGER, ALICE, "alice")
    with pytest.raises(RequestError) as missing:
        user_rules.seen_by(STRANGER, None, "alice")
    assert hidden.value.body == missing.value.body and hidden.value.body.code == "not_found"


def test_the_list_shows_whom_each_caller_may_see() -> None:
    bob = UserRecord("bob", 1.0, roles={"team-c": "admin"})
    carol = UserRecord("carol", 1.0, roles={"team-b": "admin"})
    everyone = [carol, bob, ALICE]
    assert [u.name for u in user_rules.listed(CLUSTER_ADMIN, everyone, None)] == ["alice", "bob", "carol"]
    assert [u.name for u in user_rules.listed(CLUSTER_ADMIN, everyone, "team-b")] == ["alice", "carol"]
    assert [(u.name, u.roles) for u in user_rules.listed(ADMIN_A, everyone, None)] == [("alice", {"team-a": "member"})]
    assert [u.name for u in user_rules.listed(MEMBER, everyone, None)] == ["alice"]
    assert user_rules.listed(STRANGER, everyone, "team-a") == []


def test_whoami_names_the_caller_its_roles_and_credential() -> None:
    me = user_rules.whoami(MEMBER)
    assert (me.user, me.roles, me.cluster_admin, me.credential_id) == (
        "alice", {"team-a": "member", "team-b": "viewer"}, False, "c1")
    assert user_rules.whoami(CLUSTER_ADMIN).user == "cluster-admin"


# ---------------------------------------------------------------- the records
def test_a_grant_sets_or_removes_one_project_role_and_writes_nothing_when_already_so() -> None:
    promoted = user_rules.granted(ALICE, "alice", "team-a", "admin")
    assert promoted is not None and promoted.roles == {"team-a": "admin", "team-b": "viewer"}
    removed = user_rules.granted(ALICE, "alice", "team-b", "none")
    assert removed is not None and removed.roles == {"team-a": "member"}
    assert user_rules.granted(ALICE, "alice", "team-a", "member") is None
    assert user_rules.granted(ALICE, "alice", "team-z", "none") is None
    with pytest.raises(RequestError) as missing:
        user_rules.granted(None, "nobody", "team-a", "member")
    assert missing.value.body.code == "not_found"


def test_credentials_are_added_revoked_and_users_disabled() -> None:
    token = Credential("t2", "token", 5.0, token_hash="h2")
    more = user_rules.with_credential(ALICE, "alice", token)
    assert [c.id for c in more.credentials] == ["c1", "t1", "t2"]
    revoked = user_rules.revoked(more, "alice", "c1", 9.0)
    assert revoked is not None and revoked.credentials[0].revoked_at == 9.0 and revoked.credentials[1].active
    assert user_rules.revoked(revoked, "alice", "c1", 10.0) is None  # already revoked: nothing to write
    with pytest.raises(RequestError) as unknown:
        user_rules.revoked(ALICE, "alice", "c9", 9.0)
    assert unknown.value.body.details[0].field == "credential_id"
    disabled = user_rules.revoked(ALICE, "alice", None, 9.0)
    assert disabled is not None and disabled.disabled_at == 9.0
    assert user_rules.revoked(disabled, "alice", None, 10.0) is None
    with pytest.raises(RequestError) as dead:
        user_rules.with_credential(disabled, "alice", token)
    assert dead.value.body.code == "conflict"


def test_requests_are_checked_field_by_field() -> None:
    ok = decode_as(b'{"name": "alice", "project": "team.a", "role": "member"}', UserCreate, 4096)
    assert ok.token is True and ok.public_key is None
    for body in (b'{"name": "Alice", "project": "a", "role": "member"}',
                 b'{"name": "alice", "project": "a", "role": "owner"}',
                 b'{"name": "alice", "project": "a", "role": "member", "public_key": "SUAB"}',
                 b'{"name": "alice", "project": "a", "role": "member", "extra": 1}'):
        with pytest.raises(RequestError):
            decode_as(body, UserCreate, 4096)
    assert decode_as(b'{"name": "a", "project": "p", "role": "none"}', UserGrant, 4096).role == "none"


# ---------------------------------------------------------------- the users signer
def test_the_signer_file_round_trips_and_signs_people(tmp_path) -> None:
    authority = Authority.load_or_create(tmp_path / "keys")
    signer = parse_signer(signer_of(authority).text())
    assert signer.account == authority.users.public_key
    assert signer.key.public_key == authority.users_signing.public_key
    person = KeyPair.generate(KeyKind.USER).public_key
    claims = decode(signer.sign(person, "alice"))
    assert claims["iss"] == authority.users_signing.public_key and claims["sub"] == person
    assert claims["name"] == "alice" and claims["nats"]["issuer_account"] == authority.users.public_key


@pytest.mark.parametrize("text", ["", "SAONLYONE\n", f"{KeyPair.generate(KeyKind.USER).seed}\nA\n",
                                  f"{KeyPair.generate(KeyKind.USER).seed}\n"
                                  f"{KeyPair.generate(KeyKind.ACCOUNT).public_key}\n"])
def test_anything_else_is_no_signer(text: str) -> None:
    with pytest.raises(InvalidSigner):
        parse_signer(text)


def test_a_persons_creds_connect_with_its_own_inbox_prefix(tmp_path) -> None:
    authority = Authority.load_or_create(tmp_path / "keys")
    person = KeyPair.generate(KeyKind.USER)
    mine = tmp_path / "alice.creds"
    mine.write_text(creds_text(signer_of(authority).sign(person.public_key, "alice"), person))
    service = tmp_path / "svc.creds"
    service.write_text(authority.issue("svc", "TM", permissions.service()))
    assert inbox_options(mine) == {"inbox_prefix": permissions.user_inbox("alice")}
    assert inbox_options(service) == {} and inbox_options(None) == {}
    assert person_inbox(tmp_path / "missing.creds") is None  # the connect says why


def test_without_a_signer_nats_credentials_are_refused_with_how_to_give_one() -> None:
    users = Users(None, Directory(None), None, 4096)  # type: ignore[arg-type]  # no bucket is reached
    with pytest.raises(RequestError) as refused:
        users._nats_credential("alice", KeyPair.generate(KeyKind.USER).public_key, 1.0)
    assert refused.value.body.code == "unavailable" and "TM_USERS_SIGNING_KEY_FILE" in refused.value.body.message


# ---------------------------------------------------------------- persons who are cluster admins
def test_only_the_cluster_admin_makes_a_person_a_cluster_admin() -> None:
    user_rules.check_cluster_admin_flag(CLUSTER_ADMIN, True)
    user_rules.check_cluster_admin_flag(ADMIN_A, None)  # not asked for: nothing to check
    for caller, wanted in ((ADMIN_A, True), (ADMIN_A, False), (MEMBER, True)):
        with pytest.raises(Denied) as refused:
            user_rules.check_cluster_admin_flag(caller, wanted)
        assert refused.value.code == "forbidden" and refused.value.field == "cluster_admin"


def test_a_grant_names_a_role_a_flag_or_both() -> None:
    user_rules.check_grant(CLUSTER_ADMIN, UserGrant("alice", cluster_admin=True))
    user_rules.check_grant(ADMIN_A, UserGrant("alice", "team-a", "viewer"))
    with pytest.raises(Denied):  # a project admin may not add the flag to a role it may grant
        user_rules.check_grant(ADMIN_A, UserGrant("alice", "team-a", "viewer", cluster_admin=True))
    for req, field in ((UserGrant("alice", "team-a"), "role"), (UserGrant("alice", role="member"), "project"),
                       (UserGrant("alice"), "$")):
        with pytest.raises(RequestError) as bad:
            user_rules.check_grant(CLUSTER_ADMIN, req)
        assert bad.value.body.details[0].field == field


def test_a_flagged_person_is_a_cluster_admin_named_as_itself() -> None:
    made = user_rules.granted(ALICE, "alice", None, None, cluster_admin=True)
    assert made is not None and made.cluster_admin and made.roles == ALICE.roles
    assert user_rules.granted(made, "alice", None, None, cluster_admin=True) is None
    directory = Directory(None)  # type: ignore[arg-type]
    directory.put(msgspec.structs.replace(made, credentials=[Credential("t9", "token", 1.0,
                                                                        token_hash=token_hash("tmu_boss"))]))
    boss = directory.caller_of_token("tmu_boss")
    assert boss.cluster_admin and boss.may("any-project", Role.ADMIN) and boss.projects() is None
    assert boss.actor == "user/alice" and boss.credential == "t9"  # the trail names the person
    assert user_rules.whoami(boss).cluster_admin and user_rules.view(made, made.roles).cluster_admin
