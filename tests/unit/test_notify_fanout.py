"""Fan-out, webhook ids and bodies, topic-record changes and the email text (pure)."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier import topics as core
from services.notifier.core import fan_out, fanout_msg_id, subscription_event, webhook_id
from services.notifier.mail import render_email
from trainmaster.messages import (
    JobCloudEvent,
    JobEventData,
    Status,
    SubscribeRequest,
    TopicRecord,
    TopicSubscription,
    encode,
)

EVENT = JobCloudEvent(
    id="job-abc.5", source="trainmaster/scheduler", type="tm.job.failed", subject="job-abc",
    time="2026-01-02T03:04:05+00:00",
    data=JobEventData(job_id="job-abc", name="iris", version="V007", status=Status.FAILED,
                      previous_status=Status.RUNNING, change="node_exited", reason="exit code 3", exit_code=3,
                      output_path="/srv/out/iris", log_path="/srv/logs/iris"),
)
RAW = msgspec.Raw(encode(EVENT.data))


def sub(i: int, state: str = "active", protocol: str = "webhook") -> TopicSubscription:
    return TopicSubscription(id=f"sub_{i}", protocol=protocol, endpoint=f"https://h{i}.example.com/",  # type: ignore[arg-type]
                             created_at=1.0, secret="whsec_" + "A" * 32, state=state)  # type: ignore[arg-type]


def test_one_task_per_active_subscription() -> None:
    topic = TopicRecord("team", 1.0, subscriptions=[sub(1), sub(2, "disabled"), sub(3, protocol="email")])
    tasks = fan_out(EVENT, RAW, "OnJobFailed", topic, 10.0)
    assert [t.subscription_id for t in tasks] == ["sub_1", "sub_3"]
    for t in tasks:
        body = json.loads(bytes(t.body))
        assert body["id"] == t.id == webhook_id(EVENT.id, t.subscription_id)
        assert body["specversion"] == "1.0" and body["type"] == "tm.job.failed" and body["subject"] == "job-abc"
        assert body["time"] == EVENT.time and body["source"] == EVENT.source
        assert body["data"] == json.loads(encode(EVENT.data))
        assert (body["tmeventid"], body["tmnotification"], body["tmtopic"]) == ("job-abc.5", "OnJobFailed", "team")
        assert t.event_id == EVENT.id and t.job_id == "job-abc" and t.created_at == 10.0


def test_fan_out_is_deterministic() -> None:
    topic = TopicRecord("team", 1.0, subscriptions=[sub(1), sub(2)])
    assert fan_out(EVENT, RAW, "OnJobFailed", topic, 1.0) == fan_out(EVENT, RAW, "OnJobFailed", topic, 1.0)


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_webhook_ids_are_stable_distinct_and_key_safe(event_id: str, a: str, b: str) -> None:
    assert webhook_id(event_id, a) == webhook_id(event_id, a)
    if a != b:
        assert webhook_id(event_id, a) != webhook_id(event_id, b)
    wid = webhook_id(event_id, a)
    assert wid.startswith("msg_") and len(wid) == 36 and wid[4:].isalnum()
    assert fanout_msg_id(event_id, a) == f"{event_id}:{a}"


@pytest.mark.parametrize(("status", "previous", "name"), [
    (Status.RUNNING, Status.SCHEDULED, "OnJobRunning"), (Status.SUCCEEDED, Status.RUNNING, "OnJobSucceeded"),
    (Status.FAILED, Status.INITIALIZING, "OnJobFailed"), (Status.STOPPED, Status.STOPPING, "OnJobStopped"),
    (Status.PENDING, Status.INITIALIZING, None), (Status.RUNNING, Status.RUNNING, None),
])
def test_subscription_events(status: Status, previous: Status, name: str | None) -> None:
    assert subscription_event(status, previous) == name


# ------------------------------------------------------------------ topic records
def test_subscribe_generates_a_secret_for_webhooks_only() -> None:
    s = core.subscription_of(SubscribeRequest("t", "webhook", "https://x.example.com/"), "https://x.example.com/",
                             "sub_1", 5.0)
    assert s.secret and s.secret.startswith("whsec_") and s.state == "active"
    given_secret = "whsec_" + "B" * 32
    assert core.subscription_of(SubscribeRequest("t", "webhook", "u", given_secret), "u", "s", 1).secret == given_secret
    assert core.subscription_of(SubscribeRequest("t", "email", "a@b.example"), "a@b.example", "s", 1).secret is None
    with pytest.raises(core.ApiProblem):
        core.subscription_of(SubscribeRequest("t", "webhook", "u", "nope"), "u", "s", 1)
    with pytest.raises(core.ApiProblem):
        core.subscription_of(SubscribeRequest("t", "email", "a@b.example", given_secret), "a@b.example", "s", 1)


def test_add_remove_disable_and_delete() -> None:
    t = TopicRecord("team", 1.0)
    t = core.add_subscription(t, sub(1))
    t = core.add_subscription(t, sub(2))
    with pytest.raises(core.ApiProblem) as exc:
        core.check_delete(t, force=False)
    assert exc.value.code == "conflict"
    core.check_delete(t, force=True)
    disabled = core.disable_subscription(t, "sub_1", "410", 9.0)
    assert disabled is not None and disabled.subscriptions[0].state == "disabled"
    assert disabled.subscriptions[0].disabled_at == 9.0
    assert core.disable_subscription(disabled, "sub_1", "410", 10.0) is None  # once only
    t = core.remove_subscription(t, "sub_1")
    assert [s.id for s in t.subscriptions] == ["sub_2"]
    with pytest.raises(core.ApiProblem) as exc:
        core.remove_subscription(t, "sub_1")
    assert exc.value.code == "not_found"
    view = core.view("team", sub(2))
    assert view.secret is None and core.view("team", sub(2), with_secret=True).secret


@pytest.mark.parametrize("address", ["ops@example.com", "a.b+c@mail.example.org", "x@localhost"])
def test_email_addresses(address: str) -> None:
    assert core.check_email(address) == address


@pytest.mark.parametrize("address", ["", "no-at", "a@", "@b.com", "a b@c.com", "a@b c.com", "<a@b.com>"])
def test_bad_email_addresses(address: str) -> None:
    with pytest.raises(core.ApiProblem):
        core.check_email(address)


# ------------------------------------------------------------------ email
def test_email_names_job_version_status_reason_and_locations() -> None:
    msg = render_email(EVENT, notification="OnJobFailed", topic="team", delivery_id="msg_1", sender="tm@x.example",
                       to="ops@x.example")
    assert msg["Subject"] == "[trainmaster] iris V007 failed: Failed"
    assert msg["To"] == "ops@x.example" and msg["From"] == "tm@x.example"
    assert msg["Message-ID"] == "<msg_1@trainmaster>"
    text = msg.get_content()
    for part in ("iris", "V007", "Failed (was Running)", "exit code 3", "Exit code:  3", "/srv/out/iris",
                 "/srv/logs/iris", "job-abc", "trainmaster job show job-abc", "'team'"):
        assert part in text, part
