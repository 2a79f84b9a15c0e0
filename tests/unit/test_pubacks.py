"""Pipelined JetStream publishes: what the server's answer to a publish means, and how the one
reply subscription hands answers back, a future per message or a batch at a time.  The
connection here only records publishes and answers them as a server would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from nats.js import errors as js_errors

from trainmaster.pubacks import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_STREAM,
    PubAcks,
    cas_headers,
    read_puback,
    settled,
)

STORED = b'{"stream":"TM_EVENTS","seq":%d}'
LOST = b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"}}'
FULL = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'


# ------------------------------------------------------------------------------ the answers
def test_a_puback_gives_the_sequence_stored_at_a_duplicate_too() -> None:
    assert read_puback(b'{"stream":"TM_EVENTS","seq":42}') == 42
    assert read_puback(b'{"stream":"TM_EVENTS","seq":42,"duplicate":true}') == 42


@pytest.mark.parametrize("err_code", [10071, 10164])
def test_a_lost_compare_and_set_reads_as_nats_py_kv_error(err_code: int) -> None:
    error = read_puback(b'{"error":{"code":400,"err_code":%d,"description":"wrong last sequence: 5"}}' % err_code)
    assert isinstance(error, js_errors.KeyWrongLastSequenceError)
    assert "wrong last sequence" in str(error.description)


def test_any_other_refusal_is_an_api_error_with_the_servers_words() -> None:
    error = read_puback(FULL)
    assert type(error) is js_errors.APIError
    assert (error.code, error.err_code, error.description) == (503, 10077, "maximum messages exceeded")


def test_no_stream_for_the_subject_and_an_unreadable_answer_are_errors() -> None:
    assert isinstance(read_puback(b"", "503"), js_errors.NoStreamResponseError)
    assert isinstance(read_puback(b""), js_errors.NoStreamResponseError)  # no responders: an empty body
    assert type(read_puback(b"not json")) is js_errors.APIError
    assert type(read_puback(b'{"seq":"x"}')) is js_errors.APIError


def test_a_compare_and_set_write_names_the_revision_it_expects() -> None:
    assert cas_headers(0) == {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}
    assert cas_headers(17, {"Nats-Msg-Id": "x"}) == {"Nats-Msg-Id": "x", EXPECTED_LAST_SUBJECT_SEQUENCE: "17"}


async def test_settled_keeps_each_result_or_error_in_order_and_times_out_the_rest() -> None:
    async def value(v: int) -> int:
        return v

    async def fails() -> int:
        raise ValueError("no")

    results = await settled([value(1), fails(), asyncio.sleep(10), value(4)], timeout_s=0.05)
    assert results[0] == 1 and results[3] == 4
    assert isinstance(results[1], ValueError) and isinstance(results[2], TimeoutError)
    assert await settled([], 1.0) == []


# ------------------------------------------------------------------------------ the shell
@dataclass
class Reply:
    subject: str
    data: bytes
    headers: dict[str, str] | None = None


@dataclass
class Server:
    """Answers each publish with ``answer(subject, headers)`` (``None``: no answer, ever)."""

    answer: Callable[[str, dict[str, str] | None], bytes | None]
    sent: list[tuple[str, bytes, str, dict[str, str] | None]] = field(default_factory=list)
    on_reply: Callable | None = None

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Callable) -> None:
        assert subject == "_INBOX.test.*"
        self.on_reply = cb

    async def publish(self, subject: str, payload: bytes, reply: str, headers: dict[str, str] | None) -> None:
        self.sent.append((subject, payload, reply, headers))
        body = self.answer(subject, headers)
        if body is not None:
            assert self.on_reply is not None
            asyncio.get_running_loop().create_task(self.on_reply(Reply(reply, body)))


def by_subject(**answers: bytes | None) -> Callable[[str, dict[str, str] | None], bytes | None]:
    return lambda subject, _headers: answers[subject]


async def test_a_publish_is_a_future_of_its_sequence_or_its_refusal() -> None:
    server = Server(by_subject(a=STORED % 7, b=LOST, c=FULL, d=b""))
    acks = PubAcks(server)  # type: ignore[arg-type]
    futures = [await acks.publish(s, b"x") for s in "abcd"]  # started on first use
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == 7
    assert isinstance(results[1], js_errors.KeyWrongLastSequenceError)
    assert type(results[2]) is js_errors.APIError
    assert isinstance(results[3], js_errors.NoStreamResponseError)
    acks.close()


async def test_a_publish_names_its_stream_and_the_revision_it_expects() -> None:
    server = Server(by_subject(a=STORED % 1, b=STORED % 2))
    acks = await PubAcks(server).start()  # type: ignore[arg-type]
    await (await acks.publish("a", b"x", headers={"Nats-Msg-Id": "m"}, stream="TM_EVENTS", last_subject_seq=3))
    await (await acks.publish("b", b"x"))
    assert server.sent[0][3] == {"Nats-Msg-Id": "m", EXPECTED_STREAM: "TM_EVENTS", EXPECTED_LAST_SUBJECT_SEQUENCE: "3"}
    assert server.sent[1][3] is None
    assert len({reply for _, _, reply, _ in server.sent}) == 2
    acks.close()


async def test_an_unanswered_publish_fails_at_the_sweep_after_its_deadline_and_a_late_answer_is_dropped() -> None:
    server = Server(by_subject(a=None))
    acks = await PubAcks(server, timeout_s=5.0).start()  # type: ignore[arg-type]
    future = await acks.publish("a", b"x")
    acks.expire(0.0)  # before its deadline
    assert not future.done()
    acks.expire(float("inf"))
    with pytest.raises(TimeoutError):
        await future
    assert server.on_reply is not None
    await server.on_reply(Reply(server.sent[0][2], STORED % 9))  # too late: nobody waits for it
    acks.close()


async def test_a_publish_that_cannot_be_sent_leaves_nothing_waiting() -> None:
    class Broken(Server):
        async def publish(self, subject: str, payload: bytes, reply: str, headers: dict[str, str] | None) -> None:
            raise ConnectionError("closed")

    acks = await PubAcks(Broken(by_subject())).start()  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await acks.publish("a", b"x")
    assert not acks._waiting
    acks.close()


async def test_a_batch_gets_every_answer_in_order_and_a_timeout_for_the_unanswered() -> None:
    server = Server(by_subject(a=STORED % 1, b=LOST, c=None, d=STORED % 4))
    acks = await PubAcks(server).start()  # type: ignore[arg-type]
    answers = await acks.publish_all([(s, b"x", cas_headers(0)) for s in "abcd"], timeout_s=0.05)
    assert answers[0] == 1 and answers[3] == 4
    assert isinstance(answers[1], js_errors.KeyWrongLastSequenceError)
    assert isinstance(answers[2], TimeoutError)
    assert server.sent[0][3] == {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}
    assert not acks._waiting  # the unanswered one is not waited for any more
    assert await acks.publish_all([]) == []


async def test_a_batch_of_answers_wakes_its_sender_as_soon_as_the_last_comes() -> None:
    acks = await PubAcks(Server(lambda subject, _h: STORED % int(subject))).start()  # type: ignore[arg-type]
    answers = await asyncio.wait_for(acks.publish_all([(str(n), b"x", None) for n in range(100)], 30.0), 1.0)
    assert answers == list(range(100))


async def test_storing_a_batch_returns_once_every_message_is_stored() -> None:
    server = Server(by_subject(a=STORED % 1, b=b'{"stream":"S","seq":1,"duplicate":true}'))
    acks = await PubAcks(server).start()  # type: ignore[arg-type]
    await asyncio.wait_for(acks.store_all([("a", b"x", {"Nats-Msg-Id": "1"}), ("b", b"y", None)], 30.0), 1.0)
    await acks.store_all([], 1.0)


async def test_storing_a_batch_raises_the_first_refusal_without_waiting_for_the_rest() -> None:
    acks = await PubAcks(Server(by_subject(a=STORED % 1, b=FULL, c=None))).start()  # type: ignore[arg-type]
    with pytest.raises(js_errors.APIError, match="maximum messages exceeded"):
        await asyncio.wait_for(acks.store_all([(s, b"x", None) for s in "abc"], 30.0), 1.0)
    assert not acks._waiting

    acks = await PubAcks(Server(by_subject(a=b""))).start()  # type: ignore[arg-type]
    with pytest.raises(js_errors.NoStreamResponseError):
        await acks.store_all([("a", b"x", None)], 1.0)


async def test_storing_a_batch_times_out_when_a_message_gets_no_answer() -> None:
    acks = await PubAcks(Server(by_subject(a=STORED % 1, b=None))).start()  # type: ignore[arg-type]
    with pytest.raises(TimeoutError, match="1 of 2"):
        await acks.store_all([("a", b"x", None), ("b", b"x", None)], 0.05)
    assert not acks._waiting
