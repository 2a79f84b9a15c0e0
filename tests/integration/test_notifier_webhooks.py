"""Webhook delivery end to end: a real nats-server, the notifier as a real subprocess, real
aiohttp receivers on 127.0.0.1 that verify every delivery with the ``standardwebhooks`` package.
The retry schedule is compressed to 0, 0.2, 0.4 s (three attempts) and the HTTP timeout to 1 s."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from notify_fixtures import (
    Receiver,
    api,
    body_of,
    emit,
    job_event,
    job_record,
    notifier_idle,
    put_job,
    start_notifier,
    until,
)

from trainmaster.client import Client
from trainmaster.messages import Status

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    receiver = await Receiver().start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@pytest.fixture
async def client(nats_server: str, services) -> AsyncIterator[Client]:
    await start_notifier(services, nats_server)
    c = await api(nats_server)
    try:
        yield c
    finally:
        await c.__aexit__()


async def subscribe(client: Client, rx: Receiver, topic: str, *names: str) -> dict[str, str]:
    ids = {}
    for name in names:
        sub = await client.topics.subscribe(topic, "webhook", rx.endpoint(name))
        rx.secrets[name] = sub["secret"]
        ids[name] = sub["id"]
    return ids


async def test_every_event_reaches_every_subscription_once(nc, client: Client, rx: Receiver) -> None:
    await client.topics.create("team", "the ML team")
    await client.topics.create("other")
    await subscribe(client, rx, "team", "a", "b", "c")
    await subscribe(client, rx, "other", "not-me")
    jobs = [job_record(f"job-{i}", "team", ["OnJobRunning", "OnJobSucceeded", "OnJobFailed"]) for i in range(3)]
    for rec in jobs:
        await put_job(nc, rec)
    events = []
    for rec in jobs:
        events += [job_event(rec, 1, Status.PENDING, Status.INITIALIZING),  # raises no subscription event
                   job_event(rec, 2, Status.RUNNING, Status.SCHEDULED),
                   job_event(rec, 3, Status.SUCCEEDED, Status.RUNNING, exit_code=0)]
    for event in events:
        await emit(nc, event)
    await emit(nc, events[1])  # a duplicate publish is dropped by the server (same Nats-Msg-Id)
    expected = 3 * 2 * 3  # jobs x notified events x subscriptions
    await until(lambda: len(rx.seen) >= expected, what=f"{expected} deliveries")
    await notifier_idle(nc)  # everything handled: nothing more can arrive
    assert len(rx.seen) == expected
    assert not rx.of("not-me")
    assert all(d.verified for d in rx.seen), [d for d in rx.seen if not d.verified]
    per_sub = Counter((d.path, body_of(d)["tmeventid"]) for d in rx.seen)
    assert set(per_sub.values()) == {1} and len(per_sub) == expected
    for d in rx.seen:
        body = body_of(d)
        assert body["id"] == d.webhook_id and d.webhook_id.startswith("msg_")
        assert body["specversion"] == "1.0" and body["subject"] == body["data"]["job_id"]
        assert body["type"] in ("tm.job.running", "tm.job.succeeded")
        assert body["tmnotification"] in ("OnJobRunning", "OnJobSucceeded") and body["tmtopic"] == "team"
        assert d.headers["Content-Type"].startswith("application/cloudevents+json")
    assert len({d.webhook_id for d in rx.seen}) == expected  # one id per (event, subscription)
    page = await client.topics.deliveries("team")
    assert page["total"] == expected and {d["state"] for d in page["deliveries"]} == {"delivered"}


async def test_500_is_retried_with_the_same_webhook_id_then_succeeds(nc, client: Client, rx: Receiver) -> None:
    await client.topics.create("t")
    await subscribe(client, rx, "t", "flaky")
    rx.behave["flaky"] = lambda n: 500 if n < 3 else 204
    rec = job_record("job-r", "t")
    await put_job(nc, rec)
    await emit(nc, job_event(rec, 4, Status.FAILED, Status.RUNNING, reason="boom", exit_code=1))
    await until(lambda: len(rx.of("flaky")) == 3, what="three attempts")
    seen = rx.of("flaky")
    assert len({d.webhook_id for d in seen}) == 1 and len({d.body for d in seen}) == 1
    assert all(d.verified for d in seen)
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(seen)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3, gaps  # the schedule's 0.2 s and 0.4 s
    await until(lambda: _state(client, "t", "delivered"), what="the delivered record")
    [d] = (await client.topics.deliveries("t"))["deliveries"]
    assert d["attempts"] == 3 and d["last_status"] == 204 and d["id"] == seen[0].webhook_id


async def _state(client: Client, topic: str, state: str, dead: bool = False) -> bool:
    page = await client.topics.deliveries(topic, dead=dead)
    return bool(page["deliveries"]) and all(d["state"] == state for d in page["deliveries"])


async def test_a_timeout_is_retried(nc, client: Client, rx: Receiver) -> None:
    await client.topics.create("t")
    await subscribe(client, rx, "t", "sleepy")
    rx.behave["sleepy"] = lambda n: ("sleep", 1.5, 200) if n == 1 else 200  # over the 1 s timeout once
    rec = job_record("job-t", "t")
    await put_job(nc, rec)
    await emit(nc, job_event(rec, 2, Status.RUNNING, Status.SCHEDULED))
    await until(lambda: len(rx.of("sleepy")) == 2, what="the retry after a timeout")
    assert rx.of("sleepy")[0].webhook_id == rx.of("sleepy")[1].webhook_id
    await until(lambda: _state(client, "t", "delivered"), what="delivered")
    assert (await client.topics.deliveries("t"))["deliveries"][0]["attempts"] == 2


async def test_a_redirect_is_not_followed_and_exhaustion_dead_letters(nc, nats_server: str, client: Client,
                                                                      rx: Receiver) -> None:
    await client.topics.create("t")
    ids = await subscribe(client, rx, "t", "moved")
    rx.behave["moved"] = lambda n: 302
    rec = job_record("job-d", "t")
    await put_job(nc, rec)
    await emit(nc, job_event(rec, 3, Status.SUCCEEDED, Status.RUNNING))
    await until(lambda: _state(client, "t", "dead", dead=True), what="a dead letter")
    assert len(rx.of("moved")) == 3  # every attempt of the schedule, then no more
    assert not rx.of("moved-redirected")  # never followed
    # the CLI shows it
    cli = str(Path(sys.executable).parent / "trainmaster")
    out = await asyncio.to_thread(subprocess.run, [cli, "topic", "deliveries", "t", "--dead", "--json",
                                                   "--nats-url", nats_server], capture_output=True, text=True,
                                  timeout=30)
    assert out.returncode == 0, out.stderr
    [dead] = json.loads(out.stdout)["deliveries"]
    assert dead["state"] == "dead" and dead["attempts"] == 3 and dead["last_status"] == 302
    assert dead["subscription_id"] == ids["moved"] and dead["id"] == rx.of("moved")[0].webhook_id
    assert json.loads(json.dumps(dead["body"]))["id"] == dead["id"]  # the body that was (not) delivered
    await notifier_idle(nc)  # dead-lettered and acked: no fourth attempt can come
    assert len(rx.of("moved")) == 3
    [sub] = await client.topics.subscriptions("t")
    assert sub["state"] == "active"  # failing is not disabling


async def test_410_disables_the_subscription(nc, client: Client, rx: Receiver) -> None:
    await client.topics.create("t")
    await subscribe(client, rx, "t", "gone", "fine")
    rx.behave["gone"] = lambda n: 410
    rec = job_record("job-g", "t")
    await put_job(nc, rec)
    await emit(nc, job_event(rec, 2, Status.RUNNING, Status.SCHEDULED))
    await until(lambda: len(rx.of("fine")) == 1 and len(rx.of("gone")) == 1, what="first deliveries")

    async def disabled() -> bool:
        subs = {s["endpoint"].rsplit("/", 1)[1]: s for s in await client.topics.subscriptions("t")}
        return subs["gone"]["state"] == "disabled" and subs["fine"]["state"] == "active"

    await until(disabled, what="the subscription disabled")
    subs = {s["endpoint"].rsplit("/", 1)[1]: s for s in await client.topics.subscriptions("t")}
    assert "410" in subs["gone"]["disabled_reason"] and subs["gone"]["disabled_at"]
    await emit(nc, job_event(rec, 3, Status.SUCCEEDED, Status.RUNNING))
    await until(lambda: len(rx.of("fine")) == 2, what="the next event to the active one")
    await notifier_idle(nc)
    assert len(rx.of("gone")) == 1  # not tried again, no retries, no new events
    topics = {t["name"]: t for t in await client.topics.list()}
    assert topics["t"]["subscriptions"] == 2 and topics["t"]["active_subscriptions"] == 1


async def test_a_slow_endpoint_does_not_delay_a_fast_one(nc, nats_server: str, services, rx: Receiver) -> None:
    # its own notifier: a 5 s HTTP timeout, so a 3 s endpoint is slow but not failing
    await start_notifier(services, nats_server, {"TM_WEBHOOK_TIMEOUT_S": "5", "TM_NOTIFY_ACK_WAIT_S": "12"})
    client = await api(nats_server)
    await client.topics.create("t")
    await subscribe(client, rx, "t", "slow", "fast")
    rx.behave["slow"] = lambda n: ("sleep", 3.0, 200)
    jobs = [job_record(f"job-s{i}", "t") for i in range(40)]
    for rec in jobs:
        await put_job(nc, rec)
    started = time.time()
    for rec in jobs:
        await emit(nc, job_event(rec, 2, Status.RUNNING, Status.SCHEDULED))
    await until(lambda: len(rx.of("fast")) == 40, timeout_s=10, what="all fast deliveries")
    fast_done = max(d.received_at for d in rx.of("fast")) - started
    # the slow endpoint holds up to 32 deliveries for 3 s each; the fast one is done long before
    assert fast_done < 2.5, fast_done
    assert all(d.received_at - started < 2.5 for d in rx.of("fast"))
    await until(lambda: len(rx.of("slow")) >= 40, timeout_s=25, what="all slow deliveries")
    assert len({d.webhook_id for d in rx.of("slow")}) == 40
    await client.__aexit__()
