"""Pure core: the email of one notification (subject and a plain-text body a person reads)."""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime

from trainmaster.messages import JobCloudEvent

WHAT_HAPPENED = {
    "OnJobRunning": "is running",
    "OnJobSucceeded": "succeeded",
    "OnJobFailed": "failed",
    "OnJobStopped": "was stopped",
}


def render_email(event: JobCloudEvent, *, notification: str, topic: str, delivery_id: str,
                 sender: str, to: str) -> EmailMessage:
    """``event`` is the webhook CloudEvent (its id is the delivery id); the message id is derived
    from the delivery id, so a resent email can be recognised as the same one."""
    d = event.data
    happened = WHAT_HAPPENED.get(notification, d.status.value.lower())
    msg = EmailMessage()
    msg["Subject"] = f"[trainmaster] {d.name} {d.version} {happened}: {d.status.value}"
    msg["From"] = sender
    msg["To"] = to
    msg["Message-ID"] = f"<{delivery_id}@trainmaster>"
    try:
        msg["Date"] = format_datetime(datetime.fromisoformat(event.time))
    except ValueError:
        pass
    msg["X-Trainmaster-Job"] = d.job_id
    msg["X-Trainmaster-Event"] = notification
    lines = [
        f"Training job {d.name} {d.version} {happened}.",
        "",
        f"Job:        {d.name}",
        f"Version:    {d.version}",
        f"Status:     {d.status.value}" + (f" (was {d.previous_status.value})" if d.previous_status else ""),
        f"Reason:     {d.reason or '-'}",
    ]
    if d.exit_code is not None:
        lines.append(f"Exit code:  {d.exit_code}")
    lines += [
        f"Output:     {d.output_path or '-'}",
        f"Logs:       {d.log_path or '-'}",
        f"Job id:     {d.job_id}",
        f"Time:       {event.time}",
    ]
    if d.violations:
        lines += ["", "Problems found:"] + [f"  - {v.field}: {v.message}" for v in d.violations]
    lines += [
        "",
        f"Details: trainmaster job show {d.job_id}",
        "",
        f"-- sent because the job subscribed topic {topic!r} to {notification} (delivery {delivery_id})",
    ]
    msg.set_content("\n".join(lines) + "\n")
    return msg
