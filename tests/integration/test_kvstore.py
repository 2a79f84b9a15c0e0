"""The compare-and-set helper against a real nats-server: racing writers lose nothing, a refusal
writes nothing, a key fought over past the bound gives up, and listing sees only live keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from trainmaster import kvstore

pytestmark = pytest.mark.integration

decode_int = msgspec.json.Decoder(int).decode


@pytest.fixture
async def kv(nc: NATS) -> AsyncIterator[KeyValue]:
    js = nc.jetstream()
    yield await js.create_key_value(bucket="kvstore_test", history=1)
    await js.delete_key_value("kvstore_test")


def plus_one(current: int | None) -> int:
    return (current or 0) + 1


async def test_racing_increments_all_count(kv: KeyValue) -> None:
    results = await asyncio.gather(*(kvstore.change(kv, "n", plus_one, decode=decode_int) for _ in range(40)))
    assert sorted(r.value for r in results) == list(range(1, 41))  # every writer saw its own increment
    stored = await kvstore.read(kv, "n", decode_int)
    assert stored is not None and stored.value == 40
    assert stored.revision == max(r.revision for r in results)


async def test_deciding_nothing_writes_nothing(kv: KeyValue) -> None:
    first = await kvstore.change(kv, "k", lambda _: 7, decode=decode_int)
    same = await kvstore.change(kv, "k", lambda current: None, decode=decode_int)
    assert (same.value, same.revision, same.written) == (7, first.revision, False)
    absent = await kvstore.change(kv, "other", lambda current: None, decode=decode_int)
    assert (absent.value, absent.written) == (None, False)
    assert await kvstore.read(kv, "other", decode_int) is None


async def test_a_refusal_reaches_the_caller_and_writes_nothing(kv: KeyValue) -> None:
    await kvstore.change(kv, "k", lambda _: 1, decode=decode_int)

    def refuse(current: int | None) -> int:
        raise LookupError(f"not with {current}")

    with pytest.raises(LookupError, match="not with 1"):
        await kvstore.change(kv, "k", refuse, decode=decode_int)
    assert (await kvstore.read(kv, "k", decode_int)).value == 1  # type: ignore[union-attr]


class CountingReads:
    """The bucket as ``change`` sees it, counting the reads."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.reads = 0

    async def get(self, key: str) -> KeyValue.Entry:
        self.reads += 1
        return await self.kv.get(key)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        return await self.kv.update(key, value, last=last)


class RivalBeforeEachWrite(CountingReads):
    """... with another writer's put landing between each read and the compare-and-set after it."""

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        await self.kv.put(key, b"1000")
        return await super().update(key, value, last=last)


async def test_gives_up_when_the_key_keeps_changing(kv: KeyValue) -> None:
    await kvstore.change(kv, "hot", lambda _: 0, decode=decode_int)
    contested = RivalBeforeEachWrite(kv)
    with pytest.raises(kvstore.ChangeConflict, match="hot: gave up after 3 compare-and-set conflicts"):
        await kvstore.change(contested, "hot", plus_one, decode=decode_int, attempts=3)  # type: ignore[arg-type]
    assert contested.reads == 3
    assert (await kvstore.read(kv, "hot", decode_int)).value == 1000  # type: ignore[union-attr]


async def test_create_and_delete_at_a_revision(kv: KeyValue) -> None:
    revision = await kvstore.create(kv, "a", b"1")
    assert revision is not None
    assert await kvstore.create(kv, "a", b"2") is None
    changed = await kvstore.change(kv, "a", plus_one, decode=decode_int)
    assert not await kvstore.delete_at(kv, "a", revision)  # it moved on
    assert await kvstore.delete_at(kv, "a", changed.revision)
    assert await kvstore.read(kv, "a", decode_int) is None
    assert await kvstore.read(kv, "no spaces allowed", decode_int) is None  # a key no bucket holds


async def test_values_lists_live_keys_in_key_order(kv: KeyValue) -> None:
    for key, value in (("b.1", 2), ("a.1", 1), ("c.1", 3), ("b.2", 4)):
        await kv.put(key, msgspec.json.encode(value))
    await kv.delete("c.1")
    assert [decode_int(v) for v in await kvstore.values(kv)] == [1, 2, 4]
    assert [decode_int(v) for v in await kvstore.values(kv, "b.>")] == [2, 4]


async def test_remove_checks_the_value_it_deletes(kv: KeyValue) -> None:
    await kv.put("t", msgspec.json.encode(3))

    def only_even(value: int) -> None:
        if value % 2:
            raise ValueError(f"{value} is odd")

    with pytest.raises(ValueError, match="3 is odd"):
        await kvstore.remove(kv, "t", only_even, decode=decode_int)
    assert (await kvstore.read(kv, "t", decode_int)).value == 3  # type: ignore[union-attr]
    await kv.put("t", msgspec.json.encode(4))
    assert await kvstore.remove(kv, "t", only_even, decode=decode_int) == 4
    assert await kvstore.remove(kv, "t", only_even, decode=decode_int) is None


async def test_a_known_value_saves_the_first_read_and_a_stale_one_costs_a_retry(kv: KeyValue) -> None:
    first = await kvstore.change(kv, "k", lambda _: 1, decode=decode_int)
    counted = CountingReads(kv)
    changed = await kvstore.change(counted, "k", plus_one, decode=decode_int,  # type: ignore[arg-type]
                                   known=kvstore.Stored(1, first.revision))
    assert (changed.value, changed.written, counted.reads) == (2, True, 0)
    stale = await kvstore.change(counted, "k", plus_one, decode=decode_int,  # type: ignore[arg-type]
                                 known=kvstore.Stored(1, first.revision))
    assert (stale.value, counted.reads) == (3, 1)  # the stale guess lost; decided again on the stored 2
