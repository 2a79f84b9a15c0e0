"""Pure rule of the validator for a job's ``subscription`` (notifications): the topic must exist,
belong to the job's project (its ``account``: a job does not notify another project's
subscribers), and every event must be one the notifier raises.  The shell (app.py) looks the
topic up in the topics bucket and passes the answer in; no I/O here."""

from __future__ import annotations

from trainmaster.messages import SUBSCRIPTION_EVENT_NAMES, JobRequest, Violation


def check_subscription(spec: JobRequest, topic_exists: bool | None,
                       topic_project: str | None = None) -> list[Violation]:
    """``topic_exists``: whether the named topic exists (None: not known, not checked);
    ``topic_project``: the project it belongs to (None: not known, not checked)."""
    sub = spec.subscription
    if sub is None:
        return []
    out: list[Violation] = []
    if not sub.topic:
        out.append(Violation("subscription.topic", "required",
                             "subscription.topic is missing: give the name of a topic (trainmaster topic list)"))
    elif topic_exists is False:
        out.append(Violation("subscription.topic", "unknown_topic",
                             f"topic {sub.topic!r} does not exist: create it first (trainmaster topic create "
                             f"{sub.topic}) or name an existing one (trainmaster topic list)"))
    elif topic_project is not None and topic_project != spec.account:
        out.append(Violation("subscription.topic", "topic_not_allowed",
                             f"topic {sub.topic!r} belongs to project {topic_project!r}, not to this job's "
                             f"project {spec.account!r}: name a topic of project {spec.account!r} "
                             f"(trainmaster topic list)"))
    if not sub.events:
        out.append(Violation("subscription.events", "required", "subscription.events is empty: name at least "
                             "one of " + ", ".join(SUBSCRIPTION_EVENT_NAMES)))
    for i, name in enumerate(sub.events):
        if name not in SUBSCRIPTION_EVENT_NAMES:
            out.append(Violation(f"subscription.events[{i}]", "unknown_subscription_event",
                                 f"{name!r} is not a subscription event: use " + ", ".join(SUBSCRIPTION_EVENT_NAMES)))
    return out
