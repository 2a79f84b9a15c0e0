"""JetStream publishes with many in flight, each answered by its own PubAck or its own error.

Why not nats-py's ``publish_async``: its reply handler *raises* the server's error instead of
setting it on the future (``APIError.from_error`` raises), so a refused publish, such as a KV
compare-and-set that lost (``wrong last sequence``), leaves its future pending for ever.  A writer
that sends a whole batch of creates and compare-and-sets at once needs each refusal as an answer.

``read_puback`` is pure (the server's reply -> a stream sequence, or the error to raise);
``PubAcks`` is the shell: one wildcard inbox subscription, the answers of a batch collected together.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Iterable, Mapping
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import errors as js_errors

from trainmaster.kvstore import WRONG_LAST_SEQUENCE

T = TypeVar("T")

EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
NO_RESPONDERS = "503"


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_puback = msgspec.json.Decoder(_PubAck).decode


def read_puback(data: bytes, status: str | None = None) -> int | Exception:
    """The stream sequence a publish was stored at (a duplicate's too: the server dropped a copy
    of what it holds), or the exception the publish failed with: ``KeyWrongLastSequenceError``
    for a lost compare-and-set (what nats-py's KV raises), ``NoStreamResponseError`` when no
    stream takes the subject, ``APIError`` for any other refusal."""
    if status == NO_RESPONDERS:
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
    """The answers of one ``publish_all``: a slot per message, filled as the answers come."""

    __slots__ = ("answers", "done", "left")

    def __init__(self, size: int, done: asyncio.Future[None]) -> None:
        self.answers: list[int | BaseException | None] = [None] * size
        self.left = size
        self.done = done


class PubAcks:
    """Publishes batches of messages to JetStream and collects each one's PubAck.  A batch's
    answers fill slots of one list and wake its sender once (no future per message: at thousands
    of writes a second, a future and its callbacks per message cost more than the publish)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._numbers = itertools.count()
        self._waiting: dict[str, tuple[_Batch, int]] = {}  # reply token -> (batch, slot)

    async def start(self) -> PubAcks:
        self._prefix = f"{self.nc.new_inbox()}."
        await self.nc.subscribe(f"{self._prefix}*", cb=self._on_reply)
        return self

    async def publish_all(self, messages: Iterable[tuple[str, bytes, dict[str, str] | None]],
                          timeout_s: float = 10.0) -> list[int | BaseException]:
        """Send every message (subject, body, headers), then wait for all the answers together: in
        order, each the stream sequence the message was stored at or the error ``read_puback``
        made of its refusal; a ``TimeoutError`` for one unanswered after ``timeout_s``."""
        assert self._prefix, "start() first"
        messages = list(messages)
        if not messages:
            return []
        batch = _Batch(len(messages), asyncio.get_running_loop().create_future())
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
            for token in tokens:
                self._waiting.pop(token, None)
        timed_out = TimeoutError(f"no PubAck within {timeout_s} s")
        return [timed_out if answer is None else answer for answer in batch.answers]

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if waiting is None:
            return
        batch, slot = waiting
        batch.answers[slot] = read_puback(msg.data, (msg.headers or {}).get("Status"))
        batch.left -= 1
        if batch.left == 0 and not batch.done.done():
            batch.done.set_result(None)
