"""The topics API through the public client and the CLI: create, list, delete (with and without
force), subscribe (webhook and email), unsubscribe, errors; the address guard at subscription
time (IP literals only: no traffic, no resolution); and the validator's subscription rule."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from notify_fixtures import TOPO, api, start_notifier
from support import iris_job

from trainmaster.client import ApiError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
CLI = str(Path(sys.executable).parent / "trainmaster")


async def cli(nats_url: str, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, [CLI, "topic", *args, "--nats-url", nats_url],
                                   capture_output=True, text=True, timeout=30)


async def test_topics_and_subscriptions(nats_server: str, services) -> None:
    await start_notifier(services, nats_server)
    client = await api(nats_server)
    try:
        created = await client.topics.create("ml-team", "the ML team")
        assert created["name"] == "ml-team" and created["subscriptions"] == 0
        with pytest.raises(ApiError) as exc:
            await client.topics.create("ml-team")
        assert exc.value.code == "conflict"
        with pytest.raises(ApiError) as exc:
            await client.topics.create("no spaces")
        assert exc.value.code == "invalid_request"

        hook = await client.topics.subscribe("ml-team", "webhook", "http://127.0.0.1:9/hook")
        assert hook["secret"].startswith("whsec_") and hook["state"] == "active" and hook["id"].startswith("sub_")
        mine = "whsec_" + "QUJD" * 8
        hook2 = await client.topics.subscribe("ml-team", "webhook", "https://127.0.0.1:9/other", secret=mine)
        assert hook2["secret"] == mine
        mail = await client.topics.subscribe("ml-team", "email", "ops@example.org")
        subs = await client.topics.subscriptions("ml-team")
        assert [s["id"] for s in subs] == [hook["id"], hook2["id"], mail["id"]]
        assert all("secret" not in s for s in subs)  # shown once, at subscribe time

        for bad, code in [(("webhook", "ftp://x.example.com/"), "invalid_url"),
                          (("webhook", "http://user:pw@127.0.0.1/"), "invalid_url"),
                          (("email", "not-an-address"), "invalid_email")]:
            with pytest.raises(ApiError) as exc:
                await client.topics.subscribe("ml-team", *bad)
            assert exc.value.code == "invalid_request" and exc.value.details[0]["code"] == code
        with pytest.raises(ApiError) as exc:
            await client.topics.subscribe("ml-team", "webhook", "http://127.0.0.1/", secret="whsec_short")
        assert exc.value.details[0]["field"] == "secret"
        with pytest.raises(ApiError) as exc:
            await client.topics.subscribe("nope", "email", "ops@example.org")
        assert exc.value.code == "not_found"

        with pytest.raises(ApiError) as exc:
            await client.topics.delete("ml-team")
        assert exc.value.code == "conflict" and "force" in str(exc.value)
        await client.topics.unsubscribe("ml-team", hook2["id"])
        with pytest.raises(ApiError) as exc:
            await client.topics.unsubscribe("ml-team", hook2["id"])
        assert exc.value.code == "not_found"
        assert len(await client.topics.subscriptions("ml-team")) == 2

        # the CLI
        out = await cli(nats_server, "create", "cli-topic", "--description", "made by the CLI")
        assert out.returncode == 0, out.stderr
        out = await cli(nats_server, "subscribe", "cli-topic", "--email", "me@example.org", "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["protocol"] == "email", out.stderr
        out = await cli(nats_server, "create", "cli-project-topic", "--project", "team.x")
        assert out.returncode == 0 and "project team.x" in out.stdout, out.stderr
        out = await cli(nats_server, "list", "--json")
        names = {t["name"]: t for t in json.loads(out.stdout)}
        assert names["cli-topic"]["subscriptions"] == 1 and names["ml-team"]["subscriptions"] == 2
        assert names["cli-project-topic"]["project"] == "team.x" and names["ml-team"]["project"] == "default"
        assert (await cli(nats_server, "delete", "cli-project-topic")).returncode == 0
        out = await cli(nats_server, "delete", "cli-topic")
        assert out.returncode == 1 and "force" in out.stderr
        out = await cli(nats_server, "delete", "cli-topic", "--force")
        assert out.returncode == 0, out.stderr
        out = await cli(nats_server, "subscribe", "ml-team", "--webhook", "http://x", "--email", "a@b.org")
        assert out.returncode == 2

        deleted = await client.topics.delete("ml-team", force=True)
        assert deleted["subscriptions_removed"] == 2
        assert [t["name"] for t in await client.topics.list()] == []
        with pytest.raises(ApiError) as exc:
            await client.topics.get("ml-team")
        assert exc.value.code == "not_found"

        # who did what, on the audit trail: done and refused, never a signing secret
        trail = await client.nc.jetstream().subscribe(TOPO.audit("*", "*"), ordered_consumer=True)
        raw = []
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            while True:
                raw.append((await trail.next_msg(timeout=2)).data)
        await trail.unsubscribe()
        entries = [json.loads(data) for data in raw]
        seen = [(e["action"], e["target"], e["outcome"]) for e in entries if e["target"] == "ml-team"]
        assert seen[:2] == [("topic_create", "ml-team", "done"), ("topic_create", "ml-team", "refused")]
        assert ("subscribe", "ml-team", "done") in seen and ("unsubscribe", "ml-team", "refused") in seen
        assert seen[-1] == ("topic_delete", "ml-team", "done")
        assert {e["actor"] for e in entries} == {"cluster-admin"}
        assert hook2["id"] in {e["detail"].get("subscription") for e in entries}
        secrets = (hook["secret"], mine, "whsec_short")
        assert not [data for data in raw if any(secret.encode() in data for secret in secrets)]
    finally:
        await client.__aexit__()


async def test_the_guard_refuses_private_literals_at_subscription_time(nats_server: str, services) -> None:
    await start_notifier(services, nats_server, {"TM_WEBHOOK_ALLOW_PRIVATE": "false"})
    client = await api(nats_server)
    try:
        await client.topics.create("guarded")
        for url in ("http://127.0.0.1:8080/", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/",
                    "http://[::1]/", "http://[::ffff:192.168.0.1]/"):
            with pytest.raises(ApiError) as exc:
                await client.topics.subscribe("guarded", "webhook", url)
            assert exc.value.details[0]["code"] == "forbidden_address", url
        assert await client.topics.subscriptions("guarded") == []
    finally:
        await client.__aexit__()


async def test_the_validator_refuses_an_unknown_topic_and_event(nats_server: str, services, tmp_path: Path) -> None:
    await start_notifier(services, nats_server)
    await services.astart(nats_server, "job_intake", "validator")
    client = await api(nats_server)
    try:
        await client.topics.create("team")
        bad = iris_job(tmp_path, "sub-bad", subscription={"topic": "nope", "events": ["OnJobFailed", "OnJobBoom"]})
        with pytest.raises(ApiError) as exc:
            await client.create(bad)
        assert exc.value.code == "validation_failed"
        found = {(d["field"], d["code"]) for d in exc.value.details}
        assert found == {("subscription.topic", "unknown_topic"),
                         ("subscription.events[1]", "unknown_subscription_event")}
        good = iris_job(tmp_path, "sub-good", subscription={"topic": "team", "events": ["OnJobSucceeded"]})
        job = await client.create(good)
        assert job["status"] in ("Pending", "Scheduled", "Initializing")
    finally:
        await client.__aexit__()


def test_topic_subjects_come_from_the_topology() -> None:
    assert TOPO.topics("subscribe") == "tm.topics.subscribe"
    assert TOPO.notify_deliver("t", "sub_1") == "tm.notify.deliver.t.sub_1"
