"""Shell: publish many JetStream messages at once and wait until the stream stored every one.

Why not ``publish_async`` per message: it takes a semaphore under a timeout, makes a future and
builds a ``PubAck`` dataclass per message, about a tenth of the notifier's time when each event
fans out to a hundred subscriptions.  Here every message of a batch is published with its own
reply subject under one wildcard inbox; one callback counts the store's answers and fails the
batch at the first error (or a "no responders" status: the stream is missing).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg


class PublishFailed(Exception):
    pass


class _Answer(msgspec.Struct):
    error: dict | None = None


_decode_answer = msgspec.json.Decoder(_Answer).decode


class _Batch:
    def __init__(self, size: int) -> None:
        self.left = size
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class BatchPublisher:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.batches: dict[str, _Batch] = {}
        self.numbers = itertools.count()
        self.sub = None

    async def start(self) -> BatchPublisher:
        self.sub = await self.nc.subscribe(f"{self.prefix}.>", cb=self._answered)
        return self

    async def publish(self, messages: Sequence[tuple[str, bytes, dict[str, str]]], timeout_s: float) -> None:
        """Publish (subject, payload, headers) each; return once the stream stored all of them.
        Raises PublishFailed, or TimeoutError after ``timeout_s`` (a retry publishes again: give
        each message a ``Nats-Msg-Id`` so the stream drops what it already has)."""
        if not messages:
            return
        number = str(next(self.numbers))
        batch = self.batches[number] = _Batch(len(messages))
        try:
            for i, (subject, payload, headers) in enumerate(messages):
                await self.nc.publish(subject, payload, reply=f"{self.prefix}.{number}.{i}", headers=headers)
            await asyncio.wait_for(batch.done, timeout_s)
        finally:
            del self.batches[number]

    async def _answered(self, msg: Msg) -> None:
        number = msg.subject[len(self.prefix) + 1:].partition(".")[0]
        batch = self.batches.get(number)
        if batch is None or batch.done.done():
            return  # a batch given up on (timed out, failed)
        error = None
        if not msg.data:
            status = msg.headers.get("Status") if msg.headers else None
            error = f"no stream stored it (status {status})"
        else:
            try:
                answer = _decode_answer(msg.data)
            except msgspec.DecodeError as exc:
                error = f"unreadable answer: {exc}"
            else:
                if answer.error is not None:
                    error = str(answer.error.get("description") or answer.error)
        if error is not None:
            batch.done.set_exception(PublishFailed(error))
            return
        batch.left -= 1
        if not batch.left:
            batch.done.set_result(None)

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
