"""Pure core: the retry schedule and what the result of a delivery attempt means.

``classify_status`` / ``classify_error`` turn a response or an exception into an ``AttemptResult``;
``decide`` turns that result, the attempt number and the schedule into what the delivery
consumer does with the message (ack, or nak with a delay) and the record it writes.
No clock reads here: ``now`` is passed in.
"""

from __future__ import annotations

import asyncio
import enum
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"  # 2xx, or the SMTP server took the message
    RETRY = "retry"  # may work later: 3xx, 4xx but 410, 5xx, timeouts, connection errors
    DISABLE = "disable"  # 410 Gone: the receiver asks us to stop; the subscription is disabled
    PERMANENT = "permanent"  # will never work (e.g. an SMTP 5xx for the recipient): dead at once


@dataclass(frozen=True)
class AttemptResult:
    """How one delivery attempt (a webhook POST or an email) went: the verdict, the status the
    receiver answered (HTTP or SMTP code) and the error to record."""

    verdict: Verdict
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Decision:
    """What to do with the message after an attempt."""

    state: str  # the delivery record's state: delivered, retrying, dead, disabled
    retry_in_s: float | None  # nak with this delay; None: ack (done, one way or another)
    next_attempt_at: float | None


def next_attempt(attempt_no: int, schedule: Sequence[float]) -> float | None:
    """The delay before the attempt after ``attempt_no`` (1-based) failed; None when it was the last.

    ``schedule[i]`` is the delay before attempt ``i + 1``, so ``schedule[0]`` (normally 0, "at
    once") is the first attempt's and a schedule of n entries allows n attempts."""
    if attempt_no < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt_no}")
    if attempt_no >= len(schedule):
        return None
    return float(schedule[attempt_no])


def classify_status(status: int) -> AttemptResult:
    """Only 2xx is success.  Redirects are not followed, so a 3xx is a failure like any other."""
    if 200 <= status < 300:
        return AttemptResult(Verdict.DELIVERED, status)
    if status == 410:
        return AttemptResult(Verdict.DISABLE, status, "410 Gone: the endpoint asked to be disabled")
    return AttemptResult(Verdict.RETRY, status, f"HTTP {status}")


def classify_error(exc: BaseException) -> AttemptResult:
    """An exception raised while sending.  Transient unless the SMTP server refused for good."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        permanent = bool(codes) and all(500 <= c < 600 for c in codes)
        return AttemptResult(Verdict.PERMANENT if permanent else Verdict.RETRY, codes[0] if codes else None,
                       f"recipient refused: {exc}")
    if isinstance(exc, aiosmtplib.SMTPResponseException | smtplib.SMTPResponseException):
        code = exc.code
        verdict = Verdict.PERMANENT if 500 <= code < 600 else Verdict.RETRY
        return AttemptResult(verdict, code, f"SMTP {code}: {exc}"[:500])
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiosmtplib.SMTPTimeoutError):
        return AttemptResult(Verdict.RETRY, None, "timeout")
    # connection refused or reset, TLS errors, a refused address, anything unexpected: try again later
    return AttemptResult(Verdict.RETRY, None, f"{type(exc).__name__}: {exc}"[:500])


def decide(result: AttemptResult, attempt_no: int, schedule: Sequence[float], now: float) -> Decision:
    if result.verdict is Verdict.DELIVERED:
        return Decision("delivered", None, None)
    if result.verdict is Verdict.DISABLE:
        return Decision("disabled", None, None)
    if result.verdict is Verdict.PERMANENT:
        return Decision("dead", None, None)
    delay = next_attempt(attempt_no, schedule)
    if delay is None:
        return Decision("dead", None, None)
    return Decision("retrying", delay, now + delay)
