"""Pipelined JetStream publishes for a busy writer: many in flight on one reply subscription.

nats-py's ``publish_async`` does the same, but per message it also takes a semaphore through
``wait_for`` and builds its ``PubAck`` by reflecting over a dataclass's fields; for the scheduler,
writing thousands of compare-and-sets and events a second, those were a fifth of its CPU
(docs/benchmarks.md, "Where the scheduler's time goes").  Here a reply is decoded by msgspec into
the two fields a writer reads (the stream sequence, or the error), and futures that get no reply
are failed by one sweep a second, not by a timer each.
"""

from __future__ import annotations

import asyncio
import collections
import time

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js.errors import APIError, KeyWrongLastSequenceError, NoStreamResponseError

EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_STREAM = "Nats-Expected-Stream"
WRONG_LAST_SEQUENCE = (10071, 10164)


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct):
    seq: int = 0
    duplicate: bool = False
    error: _Error | None = None


_decode_ack = msgspec.json.Decoder(_Ack).decode


class AckPipe:
    """``publish`` returns a future of the stream sequence the server stored the message at; it
    fails with ``KeyWrongLastSequenceError`` for a compare-and-set that lost, ``APIError`` for
    another refusal, ``TimeoutError`` with no reply within ``timeout_s``."""

    def __init__(self, nc: NatsClient, timeout_s: float = 10.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self._prefix = ""
        self._next = 0
        self._futures: dict[str, asyncio.Future[int]] = {}
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> AckPipe:
        self._prefix = f"{self.nc.new_inbox()}."
        await self.nc.subscribe(f"{self._prefix}*", cb=self._on_reply)
        self._sweeper = asyncio.ensure_future(self._sweep())
        return self

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None,
                      stream: str | None = None, last_subject_seq: int | None = None) -> asyncio.Future[int]:
        if not self._prefix:
            await self.start()
        self._next += 1
        token = str(self._next)
        headers = dict(headers) if headers else {}
        if stream is not None:
            headers[EXPECTED_STREAM] = stream
        if last_subject_seq is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = str(last_subject_seq)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        self._deadlines.append((time.monotonic() + self.timeout_s, token))
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers or None)
        except BaseException:
            self._futures.pop(token, None)
            raise
        return future

    async def _on_reply(self, msg) -> None:
        future = self._futures.pop(msg.subject[len(self._prefix):], None)
        if future is None or future.done():
            return
        if not msg.data:  # no responders: no stream listens on the subject
            future.set_exception(NoStreamResponseError())
            return
        try:
            ack = _decode_ack(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            future.set_exception(exc)
            return
        if ack.error is None:
            future.set_result(ack.seq)
        elif ack.error.err_code in WRONG_LAST_SEQUENCE:
            future.set_exception(KeyWrongLastSequenceError(description=ack.error.description))
        else:
            future.set_exception(APIError(code=ack.error.code, err_code=ack.error.err_code,
                                          description=ack.error.description))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, token = self._deadlines.popleft()
                future = self._futures.pop(token, None)
                if future is not None and not future.done():
                    future.set_exception(TimeoutError("no PubAck in time"))

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
