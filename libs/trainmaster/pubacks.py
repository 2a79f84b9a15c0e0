"""JetStream publishes with many in flight on one reply subscription, each answered by its own
PubAck or its own error.

Why not nats-py's ``publish_async``: its reply handler *raises* the server's error instead of
setting it on the future (``APIError.from_error`` raises), so a refused publish, such as a KV
compare-and-set that lost (``wrong last sequence``), leaves its future pending for ever.  And per
message it takes a semaphore through ``wait_for`` and builds its ``PubAck`` by reflecting over a
dataclass's fields: a fifth of the scheduler's CPU, a tenth of the notifier's (docs/benchmarks.md).
Here a reply is decoded by msgspec into the two fields a writer reads (the stream sequence, or
the error).

``read_puback`` is pure (the server's reply -> a stream sequence, or the error to raise);
``PubAcks`` is the shell: one wildcard inbox subscription, answering in the two ways writers wait:

- ``publish``: a future per message, for a writer that awaits some answers and not others (the
  scheduler's compare-and-sets, events and assignments); the futures no reply came for are
  failed by one sweep a second, not by a timer each;
- ``publish_all`` / ``store_all``: a batch sent at once whose answers fill one list's slots and
  wake the sender once (no future per message: at thousands of writes a second, a future and its
  callbacks per message cost more than the publish): every answer (job-intake's batch accept), or
  the first refusal as soon as it comes (the notifier's fan-out).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import errors as js_errors

from trainmaster.kvstore import WRONG_LAST_SEQUENCE

T = TypeVar("T")

EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_STREAM = "Nats-Expected-Stream"
NO_RESPONDERS = "503"
SWEEP_EVERY_S = 1.0

Message = tuple[str, bytes, dict[str, str] | None]  # subject, body, headers


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_puback = msgspec.json.Decoder(_PubAck).decode


def read_puback(data: bytes, status: str | None = None) -> int | Exception:
    """The stream sequence a publish was stored at (a duplicate's too: the server dropped a copy
    of what it holds), or the exception the publish failed with: ``KeyWrongLastSequenceError``
    for a lost compare-and-set (what nats-py's KV raises), ``NoStreamResponseError`` when no
    stream takes the subject (a "no responders" status, an empty reply), ``APIError`` for any
    other refusal or an unreadable reply."""
    if status == NO_RESPONDERS or not data:
        return js_errors.NoStreamResponseError()
    try:
        ack = _decode_puback(data)
    except msgspec.DecodeError:
        return js_errors.APIError(description=f"not a PubAck: {data[:200]!r}")
    if ack.error is not None:
        err = ack.error
        if err.err_code in WRONG_LAST_SEQUENCE:
            return js_errors.KeyWrongLastSequenceError(description=err.description)
        return js_errors.APIError(code=err.code, err_code=err.err_code, description=err.description)
    return ack.seq


def cas_headers(last: int, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers of a KV write that succeeds only while the key is at revision ``last`` (0: absent)."""
    return {**(headers or {}), EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}


async def settled(waits: Iterable[Awaitable[T]], timeout_s: float) -> list[T | BaseException]:
    """Every result or exception of ``waits``, in order; a wait still open after ``timeout_s`` is
    cancelled and reads as a ``TimeoutError`` (the others keep what they got)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    if not tasks:
        return []
    _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    results: list[T | BaseException] = []
    for task in tasks:
        if task in pending:
            results.append(TimeoutError(f"no answer within {timeout_s} s"))
        elif task.cancelled():
            results.append(asyncio.CancelledError())
        else:
            exc = task.exception()
            results.append(exc if exc is not None else task.result())
    return results


class _Batch:
    """The answers of one batch: a slot per message, filled as the answers come.  ``fail_fast``:
    the sender is woken by the first refusal (kept in ``error``), not only by the last answer."""

    __slots__ = ("answers", "done", "error", "fail_fast", "left")

    def __init__(self, size: int, done: asyncio.Future[None], fail_fast: bool) -> None:
        self.answers: list[int | BaseException | None] = [None] * size
        self.left = size
        self.done = done
        self.fail_fast = fail_fast
        self.error: BaseException | None = None

    def answer(self, slot: int, answer: int | BaseException) -> None:
        self.answers[slot] = answer
        self.left -= 1
        if self.done.done():
            return
        if isinstance(answer, BaseException) and self.fail_fast:
            self.error = answer
            self.done.set_result(None)
        elif self.left == 0:
            self.done.set_result(None)


class PubAcks:
    """Publishes to JetStream with replies on one wildcard inbox; ``timeout_s``: how long a
    ``publish``'s future waits for its answer before it fails with ``TimeoutError``."""

    def __init__(self, nc: NATS, timeout_s: float = 10.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self._prefix = ""
        self._numbers = itertools.count(1)
        # reply token -> a publish's future, or a batch and the message's slot in it
        self._waiting: dict[str, asyncio.Future[int] | tuple[_Batch, int]] = {}
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()  # of futures
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> PubAcks:
        self._prefix = f"{self.nc.new_inbox()}."
        await self.nc.subscribe(f"{self._prefix}*", cb=self._on_reply)
        return self

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    # ------------------------------------------------------------------ a future per message
    async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str] | None = None,
                      stream: str | None = None, last_subject_seq: int | None = None) -> asyncio.Future[int]:
        """Send one message; a future of the stream sequence it was stored at, failing with
        ``read_puback``'s error for a refusal (``KeyWrongLastSequenceError`` for a compare-and-set
        at ``last_subject_seq`` that lost), ``TimeoutError`` with no reply within ``timeout_s``.
        ``stream``: stored only by that stream."""
        if not self._prefix:
            await self.start()
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        token = str(next(self._numbers))
        headers = dict(headers) if headers else {}
        if stream is not None:
            headers[EXPECTED_STREAM] = stream
        if last_subject_seq is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = str(last_subject_seq)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        self._deadlines.append((time.monotonic() + self.timeout_s, token))
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers or None)
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return future

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            self.expire(time.monotonic())

    def expire(self, now: float) -> None:
        """Fail the futures whose deadline is ``now`` or earlier and still have no answer."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, token = self._deadlines.popleft()
            future = self._waiting.pop(token, None)
            if isinstance(future, asyncio.Future) and not future.done():
                future.set_exception(TimeoutError("no PubAck in time"))

    # ------------------------------------------------------------------ batches
    async def publish_all(self, messages: Iterable[Message], timeout_s: float = 10.0) -> list[int | BaseException]:
        """Send every message (subject, body, headers), then wait for all the answers together: in
        order, each the stream sequence the message was stored at or the error ``read_puback``
        made of its refusal; a ``TimeoutError`` for one unanswered after ``timeout_s``."""
        batch = await self._send_batch(messages, timeout_s, fail_fast=False)
        if batch is None:
            return []
        timed_out = TimeoutError(f"no PubAck within {timeout_s} s")
        return [timed_out if answer is None else answer for answer in batch.answers]

    async def store_all(self, messages: Iterable[Message], timeout_s: float) -> None:
        """Send every message; return once the streams stored all of them.  Raises the first
        refusal as soon as it comes, or ``TimeoutError`` after ``timeout_s`` (a retry publishes
        again: give each message a ``Nats-Msg-Id`` so the stream drops what it already has)."""
        batch = await self._send_batch(messages, timeout_s, fail_fast=True)
        if batch is None:
            return
        if batch.error is not None:
            raise batch.error
        if batch.left:
            raise TimeoutError(f"{batch.left} of {len(batch.answers)} not stored within {timeout_s} s")

    async def _send_batch(self, messages: Iterable[Message], timeout_s: float, fail_fast: bool) -> _Batch | None:
        assert self._prefix, "start() first"
        messages = list(messages)
        if not messages:
            return None
        batch = _Batch(len(messages), asyncio.get_running_loop().create_future(), fail_fast)
        tokens = []
        try:
            for slot, (subject, body, headers) in enumerate(messages):
                token = str(next(self._numbers))
                tokens.append(token)
                self._waiting[token] = (batch, slot)
                await self.nc.publish(subject, body, reply=self._prefix + token, headers=headers)
            await asyncio.wait_for(asyncio.shield(batch.done), timeout_s)
        except TimeoutError:
            pass  # the unanswered ones read as timed out
        finally:
            for token in tokens:  # answers still to come are not waited for
                self._waiting.pop(token, None)
        return batch

    # ------------------------------------------------------------------ the replies
    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if waiting is None:
            return  # given up on: timed out, or its batch is over
        answer = read_puback(msg.data, msg.headers.get("Status") if msg.headers else None)
        if type(waiting) is tuple:
            batch, slot = waiting
            batch.answer(slot, answer)
        elif not waiting.done():
            if isinstance(answer, BaseException):
                waiting.set_exception(answer)
            else:
                waiting.set_result(answer)
