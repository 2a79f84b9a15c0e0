"""The retry schedule and the classification of attempt results (pure)."""

from __future__ import annotations

import aiohttp
import aiosmtplib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.retry import AttemptResult, Verdict, classify_error, classify_status, decide, next_attempt
from trainmaster.settings import WEBHOOK_RETRY_SCHEDULE_S

schedules = st.lists(st.floats(min_value=0, max_value=86400, allow_nan=False), min_size=1, max_size=20)


def test_the_specification_schedule_is_the_default() -> None:
    assert WEBHOOK_RETRY_SCHEDULE_S == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    delays = [next_attempt(n, WEBHOOK_RETRY_SCHEDULE_S) for n in range(1, 11)]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400, None]


@given(schedules)
def test_a_schedule_of_n_entries_allows_exactly_n_attempts(schedule: list[float]) -> None:
    attempt, waited = 1, []
    while (delay := next_attempt(attempt, schedule)) is not None:
        waited.append(delay)
        attempt += 1
    assert attempt == len(schedule)
    assert waited == schedule[1:]


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError):
        next_attempt(0, [0, 1])


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_only_2xx_is_success(status: int) -> None:
    assert classify_status(status).verdict is Verdict.DELIVERED


@pytest.mark.parametrize("status", [100, 301, 302, 307, 308, 400, 401, 404, 408, 429, 500, 502, 503, 504])
def test_everything_else_but_410_is_retried(status: int) -> None:
    outcome = classify_status(status)
    assert outcome.verdict is Verdict.RETRY and outcome.status == status


def test_410_disables() -> None:
    assert classify_status(410).verdict is Verdict.DISABLE


@pytest.mark.parametrize("exc", [
    TimeoutError(), aiohttp.ServerTimeoutError("slow"), ConnectionRefusedError(111, "refused"),
    aiohttp.ClientConnectionError("reset"), aiohttp.ServerDisconnectedError(), OSError("no route"),
    aiosmtplib.SMTPConnectError("no"), aiosmtplib.SMTPResponseException(421, "busy"), RuntimeError("surprise"),
])
def test_transient_errors_are_retried(exc: BaseException) -> None:
    assert classify_error(exc).verdict is Verdict.RETRY


def test_a_permanent_smtp_refusal_is_dead_at_once() -> None:
    refused = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no such user", "x@y.z")])
    assert classify_error(refused).verdict is Verdict.PERMANENT
    assert classify_error(aiosmtplib.SMTPResponseException(554, "rejected")).verdict is Verdict.PERMANENT
    assert decide(classify_error(refused), 1, [0, 5], 0.0).state == "dead"


@given(schedules, st.integers(min_value=1, max_value=25), st.floats(min_value=0, max_value=2e9))
def test_decide_retries_until_the_schedule_is_used_up(schedule: list[float], attempt: int, now: float) -> None:
    d = decide(AttemptResult(Verdict.RETRY, 500), attempt, schedule, now)
    if attempt < len(schedule):
        assert d.state == "retrying" and d.retry_in_s == schedule[attempt]
        assert d.next_attempt_at == now + schedule[attempt]
    else:
        assert d.state == "dead" and d.retry_in_s is None


def test_decide_success_and_disable_ack() -> None:
    assert decide(AttemptResult(Verdict.DELIVERED, 200), 1, [0], 0).state == "delivered"
    assert decide(AttemptResult(Verdict.DISABLE, 410), 1, [0, 1], 0).retry_in_s is None
