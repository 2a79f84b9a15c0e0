"""People made through ``tm.users.*`` on a secured bus with job-intake running: the cluster admin
creates a person whose key pair was made on the caller's side, the person connects with the JWT
job-intake signed and is known by its roles; project admins manage their project only; revoked
credentials and disabled users are refused within seconds; tokens are kept only as hashes; the
CLI writes a creds file a person connects with."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import nats
import people_fixtures
import pytest
from nats.aio.client import Client as NATS
from people_fixtures import TOPO, PeopleStack
from support import assert_error, call

from trainmaster.auth.authority import write_private
from trainmaster.auth.jwt import creds_text
from trainmaster.auth.nkeys import KeyKind, KeyPair
from trainmaster.identity import token_hash

pytestmark = pytest.mark.integration
stack = people_fixtures.people  # the fixture, under the name these tests ask for
CLI = str(Path(sys.executable).parent / "trainmaster")


async def create_person(stack: PeopleStack, by: NATS, name: str, project: str, role: str,
                        token: bool = True) -> tuple[NATS, dict]:
    """``name`` created through tm.users.create with a key pair made here, connected as itself."""
    key = KeyPair.generate(KeyKind.USER)
    made = await call(by, TOPO.users("create"), {"name": name, "project": project, "role": role,
                                                 "public_key": key.public_key, "token": token})
    assert made.get("jwt"), made
    creds = stack.secured.creds_dir / f"{name}-made.creds"
    write_private(creds, creds_text(made["jwt"], key))
    return await stack.connect_as(name, creds), made


async def refused_within(nc: NATS, seconds: float = 2.0) -> dict:
    """The first reply to whoami that is an error, asked until ``seconds`` have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        reply = await call(nc, TOPO.users("whoami"), {})
        if "error" in reply or loop.time() > deadline:
            return reply
        await asyncio.sleep(0.1)


async def test_the_admin_creates_a_person_who_connects_as_itself(stack: PeopleStack) -> None:
    admin = await stack.admin()
    assert (await call(admin, TOPO.users("whoami"), {}))["user"] == "cluster-admin"
    alice, made = await create_person(stack, admin, "alice", "team-a", "member")
    assert made["user"] == "alice" and made["token"].startswith("tmu_") and len(made["token"]) == 36

    me = await call(alice, TOPO.users("whoami"), {})
    assert me == {"user": "alice", "roles": {"team-a": "member"}, "cluster_admin": False,
                  "credential_id": made["credential_id"]}
    # a user that exists is not made twice
    assert_error(await call(admin, TOPO.users("create"), {"name": "alice", "project": "team-b", "role": "viewer"}),
                 "conflict", "name")

    # the token is kept only as its hash, and never shown again
    kv = await admin.jetstream().key_value(TOPO.bucket_users.name)
    raw = (await kv.get("alice")).value
    assert made["token"].encode() not in raw and token_hash(made["token"]).encode() in raw
    view = await call(admin, TOPO.users("get"), {"name": "alice"})
    assert made["token"] not in json.dumps(view) and "token_hash" not in json.dumps(view)
    assert {c["kind"] for c in view["credentials"]} == {"nats", "token"}

    # the token resolves to its user for the services only; a person cannot even ask
    who = await call(admin, TOPO.users("authenticate"), {"token": made["token"]})
    assert who["user"] == "alice" and who["roles"] == {"team-a": "member"}
    assert_error(await call(admin, TOPO.users("authenticate"), {"token": "tmu_nothing"}), "unauthorized")
    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
        await alice.request(TOPO.users("authenticate"), json.dumps({"token": made["token"]}).encode(), timeout=1)

    # each change is in the audit trail, under its project
    entries = (await call(admin, TOPO.audit_list, {"project": "team-a"}))["entries"]
    assert any(e["action"] == "user_create" and e["target"] == "alice" and e["detail"] == {"role": "member"}
               for e in entries), entries

    # alice issues herself a token; she cannot issue one to anybody else
    issued = await call(alice, TOPO.users("issue"), {"name": "alice", "kind": "token"})
    assert issued["token"].startswith("tmu_") and issued["kind"] == "token"
    assert_error(await call(alice, TOPO.users("issue"), {"name": "bob", "kind": "token"}), "forbidden")


async def test_project_admins_manage_their_own_project_only(stack: PeopleStack) -> None:
    admin = await stack.admin()
    ada = await stack.person("ada", {"team-a": "admin", "team-c": "viewer"})
    await stack.add_user("zed", {"team-c": "member"})
    made = await call(ada, TOPO.users("create"), {"name": "bob", "project": "team-a", "role": "member"})
    assert made["user"] == "bob" and "jwt" not in made and made["token"].startswith("tmu_")
    assert_error(await call(ada, TOPO.users("create"), {"name": "carol", "project": "team-b", "role": "member"}),
                 "forbidden", "project")
    assert_error(await call(ada, TOPO.users("grant"), {"name": "bob", "project": "team-b", "role": "viewer"}),
                 "forbidden", "project")
    promoted = await call(ada, TOPO.users("grant"), {"name": "bob", "project": "team-a", "role": "viewer"})
    assert promoted["roles"] == {"team-a": "viewer"}
    await call(admin, TOPO.users("grant"), {"name": "bob", "project": "team-b", "role": "member"})

    # ada sees the users of team-a, with their team-a roles only; zed (team-c) not at all
    listed = await call(ada, TOPO.users("list"), {})
    assert {u["name"]: u["roles"] for u in listed["users"]} == {
        "ada": {"team-a": "admin", "team-c": "viewer"}, "bob": {"team-a": "viewer"}}
    assert_error(await call(ada, TOPO.users("get"), {"name": "zed"}), "not_found")
    assert {u["name"] for u in (await call(admin, TOPO.users("list"), {"project": "team-b"}))["users"]} == {"bob"}

    # a member makes nobody, and sees only itself
    member = await stack.person("mia", {"team-a": "member"})
    assert_error(await call(member, TOPO.users("create"), {"name": "dan", "project": "team-a", "role": "viewer"}),
                 "forbidden", "project")
    assert [u["name"] for u in (await call(member, TOPO.users("list"), {}))["users"]] == ["mia"]
    assert_error(await call(member, TOPO.users("get"), {"name": "bob"}), "not_found")

    # without a public key a creation makes no nats credential; with an invalid one it is refused
    assert_error(await call(admin, TOPO.users("create"), {"name": "eve", "project": "team-a", "role": "viewer",
                                                          "public_key": "U" + "A" * 55}),
                 "invalid_request", "public_key")


async def test_revoked_credentials_and_disabled_users_are_refused_within_seconds(stack: PeopleStack) -> None:
    admin = await stack.admin()
    alice, made = await create_person(stack, admin, "alice", "team-a", "member")
    bob = await stack.person("bob", {"team-a": "member"})
    assert (await call(bob, TOPO.users("whoami"), {}))["user"] == "bob"

    # one may revoke one's own credentials only, and disable nobody
    assert_error(await call(bob, TOPO.users("revoke"), {"name": "alice", "credential_id": made["credential_id"]}),
                 "forbidden", "name")
    assert_error(await call(bob, TOPO.users("revoke"), {"name": "alice"}), "forbidden")

    view = await call(alice, TOPO.users("revoke"), {"name": "alice", "credential_id": made["credential_id"]})
    assert next(c for c in view["credentials"] if c["id"] == made["credential_id"])["revoked_at"]
    assert_error(await refused_within(alice), "unauthorized")

    disabled = await call(admin, TOPO.users("revoke"), {"name": "bob"})
    assert disabled["disabled_at"]
    assert_error(await refused_within(bob), "unauthorized")
    # the connection stays open, but every verb is refused
    assert_error(await call(bob, TOPO.users("list"), {}), "unauthorized")
    assert_error(await call(bob, TOPO.users("issue"), {"name": "bob", "kind": "token"}), "unauthorized")


async def test_the_cli_creates_a_person_whose_creds_file_connects(stack: PeopleStack, tmp_path: Path) -> None:
    env = dict(os.environ, TM_NATS_URL=stack.url, TM_NATS_CREDS=str(stack.admin_creds))
    out = tmp_path / "carol.creds"

    def cli(*args: str, creds: Path | None = None) -> subprocess.CompletedProcess:
        given = env if creds is None else dict(env, TM_NATS_CREDS=str(creds))
        return subprocess.run([CLI, "user", *args], capture_output=True, text=True, timeout=60, env=given,
                              cwd=tmp_path)

    made = await asyncio.to_thread(cli, "create", "carol", "--project", "team-a", "--role", "member", "--json",
                                   "--out", str(out))
    assert made.returncode == 0, made.stderr
    shown = json.loads(made.stdout)
    assert shown["user"] == "carol" and shown["creds"] == str(out) and shown["nats_url"] == stack.url
    assert shown["token"].startswith("tmu_")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    again = await asyncio.to_thread(cli, "create", "carol", "--project", "team-a", "--role", "member",
                                    "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr

    carol = await stack.connect_as("carol", out)
    assert (await call(carol, TOPO.users("whoami"), {}))["roles"] == {"team-a": "member"}
    # the CLI run with carol's creds connects as carol (her inbox prefix, from her JWT)
    me = await asyncio.to_thread(cli, "whoami", "--json", creds=out)
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["user"] == "carol"
