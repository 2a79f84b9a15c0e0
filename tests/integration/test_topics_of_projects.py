"""Topics belong to projects, on a secured bus with real services and people: a member of a project
manages its topics, a viewer reads them, another project's person cannot tell they exist, the
audit trail names the project and the person, a job cannot name another project's topic, and
revoked credentials are refused by the notifier and by the scheduler's agents list."""

from __future__ import annotations

import time

import msgspec
import pytest
from nats.aio.client import Client as NATS
from people_fixtures import TOPO, PeopleStack, people  # noqa: F401
from support import assert_error, call, eventually, iris_job, unique

from trainmaster.access import UserRecord
from trainmaster.messages import encode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
HOOK = "http://127.0.0.1:9/hook"  # the notifier below allows loopback receivers (as the notifier tests do)


def topics(verb: str) -> str:
    return TOPO.topics(verb)


async def start(people: PeopleStack, *modules: str) -> NATS:  # noqa: F811
    """The services, as processes with service creds; the cluster admin's connection once they answer."""
    env = {"TM_NATS_CREDS": str(people.service_creds), "TM_WEBHOOK_ALLOW_PRIVATE": "true"}
    await people.services.astart(people.url, *modules, env=env)
    admin = await people.admin()

    async def answers() -> bool:
        return "topics" in await call(admin, topics("list"), {})

    await eventually(answers, timeout_s=30, what="the topics API")
    return admin


async def revoke(admin: NATS, name: str) -> None:
    """Every credential of ``name`` revoked, the way an admin's revoke writes it."""
    kv = await admin.jetstream().key_value(TOPO.bucket_users.name)
    user = msgspec.json.decode((await kv.get(name)).value, type=UserRecord)
    revoked = [msgspec.structs.replace(c, revoked_at=time.time()) for c in user.credentials]
    await kv.put(name, encode(msgspec.structs.replace(user, credentials=revoked)))


async def test_topics_belong_to_projects(people: PeopleStack, tmp_path) -> None:  # noqa: F811
    admin = await start(people, "notifier", "scheduler")
    alice = await people.person("alice", {"team-a": "member"})
    bob = await people.person("bob", {"team-b": "member"})
    vera = await people.person("vera", {"team-a": "viewer"})
    for nc in (alice, bob, vera):  # the services follow tm_users: known within moments
        await eventually(lambda nc=nc: _answered(nc, topics("list")), what="the notifier to know them")
        await eventually(lambda nc=nc: _answered(nc, TOPO.agents_list), what="the scheduler to know them")
    team_a, team_b, default_topic = unique("alerts-a"), unique("alerts-b"), unique("alerts-default")

    # alice, member of team-a, makes a team-a topic and subscribes a webhook to it
    created = await call(alice, topics("create"), {"name": team_a, "project": "team-a"})
    assert created["project"] == "team-a" and created["subscriptions"] == 0
    assert_error(await call(alice, topics("create"), {"name": unique("x"), "project": "team-b"}), "forbidden",
                 "project")
    assert_error(await call(alice, topics("create"), {"name": unique("x")}), "forbidden", "project")  # default
    hook = await call(alice, topics("subscribe"), {"topic": team_a, "protocol": "webhook", "endpoint": HOOK})
    assert hook["secret"].startswith("whsec_") and hook["topic"] == team_a
    assert (await call(bob, topics("create"), {"name": team_b, "project": "team-b"}))["project"] == "team-b"
    assert (await call(admin, topics("create"), {"name": default_topic}))["project"] == "default"

    # bob, of team-b, cannot tell team-a's topic from a missing one
    for verb, body in [("get", {"name": team_a}), ("subscriptions", {"name": team_a}),
                       ("delete", {"name": team_a, "force": True}),
                       ("subscribe", {"topic": team_a, "protocol": "webhook", "endpoint": HOOK}),
                       ("unsubscribe", {"topic": team_a, "subscription_id": hook["id"]}),
                       ("deliveries", {"topic": team_a})]:
        hidden = await call(bob, topics(verb), body)
        missing = await call(bob, topics(verb), {k: "no-such-topic" if v == team_a else v for k, v in body.items()})
        assert_error(hidden, "not_found")
        assert hidden["error"]["message"] == missing["error"]["message"].replace("no-such-topic", team_a), verb
        assert hidden["error"]["details"][0]["field"] == missing["error"]["details"][0]["field"], verb
    assert [t["name"] for t in (await call(bob, topics("list"), {}))["topics"]] == [team_b]

    # vera, viewer of team-a, reads it but does not manage it
    assert [t["name"] for t in (await call(vera, topics("list"), {}))["topics"]] == [team_a]
    assert (await call(vera, topics("get"), {"name": team_a}))["subscriptions"] == 1
    assert [s["id"] for s in (await call(vera, topics("subscriptions"), {"name": team_a}))["subscriptions"]] == [
        hook["id"]]
    assert (await call(vera, topics("deliveries"), {"topic": team_a}))["total"] == 0
    refused = await call(vera, topics("subscribe"), {"topic": team_a, "protocol": "email", "endpoint": "v@example.org"})
    assert_error(refused, "forbidden", "topic")
    assert "viewer" in refused["error"]["message"]
    assert_error(await call(vera, topics("delete"), {"name": team_a, "force": True}), "forbidden", "name")
    assert_error(await call(vera, topics("unsubscribe"), {"topic": team_a, "subscription_id": hook["id"]}),
                 "forbidden", "topic")

    # the cluster admin sees every topic
    listed = {t["name"]: t["project"] for t in (await call(admin, topics("list"), {}))["topics"]}
    assert {team_a: "team-a", team_b: "team-b", default_topic: "default"}.items() <= listed.items()

    # the audit trail: under the topic's project, naming who asked; refusals too
    async def team_a_entries() -> list[dict] | None:
        entries = (await call(admin, TOPO.audit_list, {"project": "team-a", "limit": 1000}))["entries"]
        mine = [(e["actor"], e["action"], e["outcome"]) for e in entries if e["target"] == team_a]
        return mine if len(mine) >= 6 else None

    entries = await eventually(team_a_entries, what="team-a's audit entries")
    assert entries[:2] == [("user/alice", "topic_create", "done"), ("user/alice", "subscribe", "done")]
    for expected in [("user/bob", "topic_delete", "refused"), ("user/bob", "subscribe", "refused"),
                     ("user/vera", "subscribe", "refused"), ("user/vera", "topic_delete", "refused")]:
        assert expected in entries

    # a job of another project may not name team-a's topic
    job = iris_job(tmp_path, unique("sub-other"), subscription={"topic": team_a, "events": ["OnJobFailed"]})
    rejected = await call(admin, TOPO.jobs("create"), job)
    assert_error(rejected, "validation_failed")
    [detail] = [d for d in rejected["error"]["details"] if d["field"] == "subscription.topic"]
    assert detail["code"] == "topic_not_allowed" and "'team-a'" in detail["message"]

    # alice's own unsubscribe and delete pass
    await call(alice, topics("unsubscribe"), {"topic": team_a, "subscription_id": hook["id"]})
    assert (await call(alice, topics("delete"), {"name": team_a}))["deleted"] == team_a

    # anyone known lists agents; revoked or unknown credentials are refused by both services
    assert "agents" in await call(vera, TOPO.agents_list, {})
    await revoke(admin, "bob")

    async def refused_bob() -> dict | None:
        reply = await call(bob, topics("list"), {})
        return reply if "error" in reply else None

    assert_error(await eventually(refused_bob, what="bob's revocation at the notifier"), "unauthorized")
    reply = await eventually(lambda: _refused(bob, TOPO.agents_list), what="bob's revocation at the scheduler")
    assert_error(reply, "unauthorized")
    assert "revoked" in reply["error"]["message"]
    creds, _ = people.secured.person_creds("mallory")  # a key no user holds
    mallory = await people.connect_as("mallory", creds)
    assert_error(await call(mallory, TOPO.agents_list, {}), "unauthorized")
    assert_error(await call(mallory, topics("get"), {"name": team_b}), "unauthorized")

    # bob's refused attempt, audited with the name the bus gives it (no known caller)
    async def bob_refused_unauthorized() -> list | None:
        attempt = await call(bob, topics("delete"), {"name": team_b})
        assert_error(attempt, "unauthorized")
        entries = (await call(admin, TOPO.audit_list, {"project": "team-b", "limit": 1000}))["entries"]
        found = [e for e in entries if e["action"] == "topic_delete" and e["outcome"] == "refused"]
        return found or None

    [entry, *_] = await eventually(bob_refused_unauthorized, what="the refused delete on the audit trail")
    assert entry["actor"].endswith("/bob") and entry["target"] == team_b


async def _refused(nc: NATS, subject: str) -> dict | None:
    reply = await call(nc, subject, {})
    return reply if "error" in reply else None


async def _answered(nc: NATS, subject: str) -> dict | None:
    reply = await call(nc, subject, {})
    return None if "error" in reply else reply
