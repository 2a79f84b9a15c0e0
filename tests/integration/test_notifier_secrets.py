"""Webhook signing secrets at rest, with a real nats-server and the notifier as a subprocess: stored
encrypted, never in the notifier's log, the API or the delivery records; plain-text records of
older versions and secrets under a rotated-out key re-encrypted at start, and still signing; no
start without a usable key file."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from notify_fixtures import (
    TOPO,
    Receiver,
    api,
    emit,
    job_event,
    job_record,
    notifier_idle,
    put_job,
    start_notifier,
    until,
)
from support import ServiceProcess

from trainmaster import secretbox
from trainmaster.messages import Status, TopicRecord, TopicSubscription, encode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
CLI = str(Path(sys.executable).parent / "trainmaster")


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    receiver = await Receiver().start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def forms(secret: str) -> list[str]:
    """How a secret could show up: whole, or just its key part."""
    return [secret, secret.removeprefix("whsec_")]


async def stored(nc: NATS, topic: str) -> tuple[bytes, TopicRecord]:
    kv = await nc.jetstream().key_value(TOPO.bucket_topics.name)
    raw = (await kv.get(topic)).value or b""
    return raw, msgspec.json.decode(raw, type=TopicRecord)


def assert_nowhere(text: str, *plain: str) -> None:
    leaked = [form for secret in plain for form in forms(secret) if form in text]
    assert not leaked, "a signing secret leaked"


async def deliver(nc: NATS, rx: Receiver, topic: str, job_id: str, paths: list[str]) -> None:
    """One event to ``topic``; every path gets it, verified with the secret it was given."""
    rec = job_record(job_id, topic, ["OnJobSucceeded"])
    await put_job(nc, rec)
    await emit(nc, job_event(rec, 3, Status.SUCCEEDED, Status.RUNNING, exit_code=0))
    await until(lambda: all(any(d.verified and job_id.encode() in d.body for d in rx.of(p)) for p in paths),
                what=f"verified deliveries of {job_id} to {paths}")


async def test_secrets_are_stored_encrypted_and_reach_no_log_view_or_record(nc: NATS, nats_server: str, services,
                                                                         rx: Receiver) -> None:
    svc = await start_notifier(services, nats_server)
    client = await api(nats_server)
    try:
        await client.topics.create("vault")
        given = new_secret()
        a = await client.topics.subscribe("vault", "webhook", rx.endpoint("a"), secret=given)
        b = await client.topics.subscribe("vault", "webhook", rx.endpoint("b"))
        assert a["secret"] == given and b["secret"].startswith("whsec_")  # shown once, in the reply
        rx.secrets.update(a=given, b=b["secret"])
        rx.behave["b"] = lambda n: 500 if n == 1 else 204  # a failed attempt is logged: not its secret
        await deliver(nc, rx, "vault", "job-sealed", ["a", "b"])
        await notifier_idle(nc)

        raw, record = await stored(nc, "vault")
        assert_nowhere(raw.decode(), given, b["secret"])
        assert [secretbox.kid_of(s.secret or "") is not None for s in record.subscriptions] == [True, True]
        shown = [await client.topics.subscriptions("vault"), await client.topics.deliveries("vault"),
                 await client.topics.deliveries("vault", dead=True), await client.topics.get("vault")]
        assert_nowhere(json.dumps(shown), given, b["secret"])
        assert any(e.get("event") == "delivery failed; will retry" for e in svc.log_events())
    finally:
        await client.__aexit__()
    svc.terminate()
    assert_nowhere(svc.output(), given, b["secret"])


async def test_older_plain_records_and_a_rotated_key_are_reencrypted_at_start(nc: NATS, nats_server: str, services,
                                                                            rx: Receiver, tmp_path: Path) -> None:
    key_file = tmp_path / "secrets.key"
    secretbox.write_keyring(key_file, secretbox.Keyring((secretbox.new_key("first"),)))
    env = {"TM_SECRETS_KEY_FILE": str(key_file)}
    legacy = new_secret()  # as a notifier of an older version stored it: in plain text
    kv = await nc.jetstream().key_value(TOPO.bucket_topics.name)
    await kv.put("legacy", encode(TopicRecord(name="legacy", created_at=time.time(), subscriptions=[
        TopicSubscription(id="sub_00000000000000aa", protocol="webhook", endpoint=rx.endpoint("old"),
                          created_at=time.time(), secret=legacy)])))
    rx.secrets["old"] = legacy

    first = await start_notifier(services, nats_server, env=env)
    client = await api(nats_server)
    try:
        raw, record = await stored(nc, "legacy")
        assert_nowhere(raw.decode(), legacy)
        assert (record.subscriptions[0].secret or "").startswith("enc:v1:first:")
        new = await client.topics.subscribe("legacy", "webhook", rx.endpoint("new"))
        rx.secrets["new"] = new["secret"]
        await deliver(nc, rx, "legacy", "job-before", ["old", "new"])

        first.terminate()
        out = await asyncio.to_thread(subprocess.run, [CLI, "secrets", "new-key", "--out", str(key_file), "--add",
                                                       "--kid", "second"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        second = await start_notifier(services, nats_server, env=env)
        _, record = await stored(nc, "legacy")
        assert [secretbox.kid_of(s.secret or "") for s in record.subscriptions] == ["second", "second"]
        # one log file for both runs: the first re-encrypted the plain one, the second both
        starts = [e for e in second.log_events() if e.get("event", "").startswith("webhook signing secrets")]
        assert [(e["key"], e["reencrypted"], e["keys_in_use"]) for e in starts] == [
            ("first", 1, ["first"]), ("second", 2, ["second"])]
        await deliver(nc, rx, "legacy", "job-after", ["old", "new"])
        await notifier_idle(nc)
    finally:
        await client.__aexit__()
    second.terminate()
    assert_nowhere(second.output(), legacy, new["secret"])


async def exits(svc: ServiceProcess) -> int | None:
    await until(lambda: not svc.alive(), timeout_s=30, what="the notifier to give up")
    return svc.proc.returncode if svc.proc else None


async def test_the_notifier_does_not_start_without_a_usable_key_file(nats_server: str, services,
                                                                    tmp_path: Path) -> None:
    [unset] = services.spawn(nats_server, "notifier", env={"TM_SECRETS_KEY_FILE": ""})
    assert await exits(unset) == 2
    assert "trainmaster secrets new-key --out" in unset.output()
    open_file = tmp_path / "open.key"
    secretbox.ensure_key_file(open_file)
    os.chmod(open_file, 0o644)
    [too_open] = services.spawn(nats_server, "notifier", env={"TM_SECRETS_KEY_FILE": str(open_file)})
    assert await exits(too_open) == 2
    assert f"chmod 600 {open_file}" in too_open.output()
