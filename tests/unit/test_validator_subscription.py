"""The validator's subscription rule (pure): the topic must exist, the events must be known."""

from __future__ import annotations

from services.validator.subscriptions import check_subscription
from trainmaster.messages import JobRequest, Subscription


def codes(spec: JobRequest, exists: bool | None) -> list[tuple[str, str]]:
    return [(v.field, v.code) for v in check_subscription(spec, exists)]


def test_no_subscription_no_violation() -> None:
    assert check_subscription(JobRequest(), None) == []


def test_a_known_topic_and_known_events_pass() -> None:
    spec = JobRequest(subscription=Subscription("team", ["OnJobRunning", "OnJobSucceeded", "OnJobFailed",
                                                         "OnJobStopped"]))
    assert check_subscription(spec, True) == []


def test_every_problem_at_once() -> None:
    spec = JobRequest(subscription=Subscription("nope", ["OnJobFailed", "OnJobExploded", "onjobrunning"]))
    assert codes(spec, False) == [("subscription.topic", "unknown_topic"),
                                  ("subscription.events[1]", "unknown_subscription_event"),
                                  ("subscription.events[2]", "unknown_subscription_event")]


def test_empty_topic_and_events_are_required() -> None:
    assert codes(JobRequest(subscription=Subscription("", [])), None) == [
        ("subscription.topic", "required"), ("subscription.events", "required")]


def test_unknown_existence_is_not_reported() -> None:
    assert codes(JobRequest(subscription=Subscription("team", ["OnJobFailed"])), None) == []


def test_messages_say_what_to_do() -> None:
    [v] = check_subscription(JobRequest(subscription=Subscription("nope", ["OnJobFailed"])), False)
    assert "trainmaster topic create nope" in v.message


def test_a_topic_of_another_project_is_not_allowed() -> None:
    spec = JobRequest(account="team-a", subscription=Subscription("alerts", ["OnJobFailed"]))
    assert check_subscription(spec, True, "team-a") == []
    [v] = check_subscription(spec, True, "team-b")
    assert (v.field, v.code) == ("subscription.topic", "topic_not_allowed")
    assert "project 'team-b'" in v.message and "'team-a'" in v.message
    assert check_subscription(JobRequest(subscription=Subscription("alerts", ["OnJobFailed"])), True, "default") == []
    assert codes(JobRequest(account="team-a", subscription=Subscription("alerts", ["OnJobFailed"])), None) == []
