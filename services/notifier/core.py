"""Pure core of the notifier: which subscription event a job event is, and whether the job's
subscription asked for it."""

from __future__ import annotations

from trainmaster.messages import JobRecord, Status

SUBSCRIPTION_EVENTS: dict[Status, str] = {
    Status.RUNNING: "OnJobRunning",
    Status.SUCCEEDED: "OnJobSucceeded",
    Status.FAILED: "OnJobFailed",
    Status.STOPPED: "OnJobStopped",
}


def subscription_event(status: Status, previous: Status | None) -> str | None:
    """The subscription event a status change raises (None when the status did not change)."""
    if status == previous:
        return None
    return SUBSCRIPTION_EVENTS.get(status)


def wanted(record: JobRecord, event_name: str) -> str | None:
    """The topic to notify when the job's subscription names ``event_name``."""
    sub = record.spec.subscription
    if sub is None or event_name not in sub.events:
        return None
    return sub.topic
