"""A job's events and logs as a streamed reply: the headers of each message, when a feed ends, and
where the last lines of a log begin (trainmaster.jobfeed)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from trainmaster import jobfeed
from trainmaster.jobfeed import EventsRequest, LogsRequest, Pace, Progress, Step, next_step

PACE = Pace(window_s=300, keepalive_s=20, settle_s=1)


def at(now: float, **fields: object) -> Progress:
    base: dict[str, object] = {"follow": True, "started": 0.0, "now": now, "last_sent": 0.0}
    return Progress(**{**base, **fields})  # type: ignore[arg-type]


def test_a_log_line_keeps_its_stream_and_number_and_names_its_node() -> None:
    stored = {"Tm-Stream": "stderr", "Tm-Line": "7", "Nats-Msg-Id": "job-1.1.0.7"}
    assert jobfeed.line_headers(42, "tm.logs.job-1.3", stored) == {
        "Tm-Seq": "42", "Tm-Stream": "stderr", "Tm-Line": "7", "Tm-Node": "3"}
    assert jobfeed.line_headers(1, "tm.logs.job-1.0", None) == {"Tm-Seq": "1", "Tm-Node": "0"}


def test_an_event_keeps_its_type_and_status_and_the_final_one_ends_the_job() -> None:
    stored = {"Tm-Event-Type": "tm.job.succeeded", "Tm-Job-Status": "Succeeded", "Nats-Msg-Id": "x"}
    assert jobfeed.event_headers(9, stored) == {"Tm-Seq": "9", "Tm-Event-Type": "tm.job.succeeded",
                                                "Tm-Job-Status": "Succeeded"}
    assert jobfeed.ends_job(stored)
    assert not jobfeed.ends_job({"Tm-Job-Status": "Running"}) and not jobfeed.ends_job(None)


def test_the_closing_message_says_done_or_where_to_go_on_from() -> None:
    assert jobfeed.end_headers(Step.DONE, 12) == {"Tm-End": "done"}
    assert jobfeed.end_headers(Step.MORE, 12) == {"Tm-End": "more", "Tm-Next": "12"}
    assert jobfeed.keepalive_headers() == {"Tm-Keepalive": "1"}


def test_without_follow_a_feed_reads_until_caught_up_then_ends() -> None:
    assert next_step(at(1, follow=False), PACE) is Step.READ
    assert next_step(at(1, follow=False, caught_up=True), PACE) is Step.DONE


def test_a_follow_waits_while_the_job_runs_and_keeps_the_route_alive() -> None:
    assert next_step(at(5, caught_up=True, last_sent=4), PACE) is Step.WAIT
    assert next_step(at(25, caught_up=True, last_sent=4), PACE) is Step.KEEPALIVE
    assert next_step(at(25, caught_up=False, last_sent=4), PACE) is Step.READ  # lines first


def test_a_follow_ends_once_a_read_after_the_settle_found_nothing_more() -> None:
    seen_final = at(10, caught_up=True, read_at=9.5, final_at=10)
    assert next_step(seen_final, PACE) is Step.WAIT  # lines written just before the end may still come
    assert next_step(at(11.2, caught_up=False, read_at=11.1, final_at=10), PACE) is Step.READ
    assert next_step(at(11.2, caught_up=True, read_at=11.1, final_at=10), PACE) is Step.DONE


def test_the_job_s_last_event_ends_an_events_follow_at_once() -> None:
    assert next_step(at(3, caught_up=True, ended=True), PACE) is Step.DONE
    assert next_step(at(3, caught_up=False, ended=True), PACE) is Step.READ  # whatever is stored after it


def test_the_window_ends_a_follow_with_more_unless_it_is_done() -> None:
    assert next_step(at(300, caught_up=True, last_sent=299), PACE) is Step.MORE
    assert next_step(at(300, caught_up=False), PACE) is Step.MORE
    assert next_step(at(300, follow=False, caught_up=False), PACE) is Step.MORE  # a long log: in windows
    assert next_step(at(300, follow=False, caught_up=True), PACE) is Step.DONE
    assert next_step(at(301, caught_up=True, ended=True), PACE) is Step.DONE


@pytest.mark.parametrize(("stored", "tail", "expected"), [
    ([3, 5, 8, 13, 21], 2, 9),  # the last two (13 and 21): from just after the one before
    ([3, 5, 8, 13, 21], 5, 1),  # every one: from where the request starts
    ([3, 5, 8, 13, 21], 9, 1),
    ([3, 5, 8, 13, 21], 0, 22),  # none: from after the last
    ([], 3, 1),
    ([40], 1, 1),
])
def test_the_last_lines_begin_where_a_binary_search_of_counts_says(stored: list[int], tail: int,
                                                                   expected: int) -> None:
    asked: list[int] = []

    async def count_from(seq: int) -> int:
        asked.append(seq)
        return sum(1 for s in stored if s >= seq)

    end = (max(stored) if stored else 0) + 1
    start = asyncio.run(jobfeed.tail_start(1, end, tail, count_from))
    assert start == expected
    assert sum(1 for s in stored if s >= start) == min(tail, len(stored))
    assert len(asked) <= 2 + end.bit_length()


def test_requests_decode_with_their_defaults_and_refuse_what_they_do_not_know() -> None:
    assert msgspec.json.decode(b'{"id": "job-1"}', type=EventsRequest) == EventsRequest("job-1", False, 0)
    logs = msgspec.json.decode(b'{"id": "job-1", "node": 2, "follow": true, "after": 7, "tail": 10}',
                               type=LogsRequest)
    assert logs == LogsRequest("job-1", 2, True, 7, 10)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"id": "job-1", "after": -1}', type=EventsRequest)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"id": "job-1", "lines": 3}', type=LogsRequest)
