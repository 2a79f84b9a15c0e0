"""The version number of each job name: ``tm_job_names[<name>]`` holds the latest one taken
(``1``, ``2``, ...), raised by compare-and-set so that replicas never hand out one number twice.
A batch of submissions takes the numbers of all its jobs of one name with one raise."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping

import msgspec
from nats.js.kv import KeyValue

from trainmaster import kvstore
from trainmaster.pubacks import PubAcks, cas_headers

_decode_count = msgspec.json.Decoder(int).decode
encode_count = msgspec.json.encode
KNOWN_NAMES = 10_000  # names whose counter this process remembers (the oldest forgotten first)


def _plus_one(current: int | None) -> int:
    return (current or 0) + 1


def _plus(count: int) -> Callable[[int | None], int]:
    return lambda current: (current or 0) + count


class VersionCounter:
    def __init__(self, kv: KeyValue, pubacks: PubAcks | None = None) -> None:
        """``pubacks``: raise the counters of many names at once (``take_blocks``) through it."""
        self.kv = kv
        self.pubacks = pubacks
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # name -> (lock, holders and waiters)
        # the counter of each name as this process last wrote it: the next raise is tried on it
        # without reading first (another replica's raise since then costs one lost race)
        self._known: OrderedDict[str, kvstore.Stored[int]] = OrderedDict()

    async def take(self, name: str) -> int:
        """The next version number of ``name``, taken."""
        return await self.take_block(name, 1)

    async def take_block(self, name: str, count: int) -> int:
        """The next ``count`` version numbers of ``name``, taken together: the first of them (the
        others follow it).  Within this process a per-name lock queues concurrent requests
        instead of letting them all race (10,000 requests under one name cost ~22 lost
        compare-and-sets each without it); between processes the compare-and-set decides."""
        assert count >= 1
        async with self._lock(name):
            return await self._raise(name, count)

    async def take_blocks(self, counts: Mapping[str, int],
                          timeout_s: float = 10.0) -> dict[str, int | BaseException]:
        """``take_block`` for each name of ``counts`` (the first number of its block, or why none was
        taken).  The raises of names whose counter this process knows are sent at once, one
        compare-and-set each; any other name, and one that lost its race, takes the one-name way."""
        names = sorted(counts)  # one order for every batch's locks: none waits on another in a circle
        async with contextlib.AsyncExitStack() as held:
            for name in names:
                await held.enter_async_context(self._lock(name))
            firsts: dict[str, int | BaseException] = {}
            known = {name: self._known.pop(name) for name in names if name in self._known}
            if self.pubacks is not None and known:
                sent = list(known)
                answers = await self.pubacks.publish_all(
                    ((f"{self.kv._pre}{name}", encode_count(known[name].value + counts[name]),  # type: ignore[attr-defined]
                      cas_headers(known[name].revision)) for name in sent), timeout_s)
                for name, answer in zip(sent, answers, strict=True):
                    if isinstance(answer, int):
                        taken = known[name].value + counts[name]
                        self._remember(name, kvstore.Stored(taken, answer))
                        firsts[name] = taken - counts[name] + 1
            for name in names:
                if name not in firsts:
                    try:
                        firsts[name] = await self._raise(name, counts[name], known.get(name))
                    except Exception as exc:
                        firsts[name] = exc
        return firsts

    @contextlib.asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:  # keep the map small: drop a lock nobody holds or waits for
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)

    async def _raise(self, name: str, count: int, known: kvstore.Stored[int] | None = None) -> int:
        """Raise ``name``'s counter by ``count`` (the lock held); the first number taken."""
        taken = await kvstore.change(self.kv, name, _plus(count), decode=_decode_count,
                                     known=known if known is not None else self._known.pop(name, None))
        assert taken.value is not None  # _plus always writes
        self._remember(name, kvstore.Stored(taken.value, taken.revision))
        return taken.value - count + 1

    def _remember(self, name: str, stored: kvstore.Stored[int]) -> None:
        self._known[name] = stored
        if len(self._known) > KNOWN_NAMES:
            self._known.popitem(last=False)

    async def upcoming(self, name: str) -> int:
        """The number the next ``take`` would get, not taken (what a plan shows)."""
        found = await kvstore.read(self.kv, name, _decode_count)
        return _plus_one(found.value if found is not None else None)

    @property
    def names_in_use(self) -> int:
        """How many names have a request taking a number right now."""
        return len(self._locks)
