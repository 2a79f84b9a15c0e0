"""The per-name version counter against a real nats-server: concurrent requests under one name
and two counters (two replicas) never share a number, the stored value stays a plain number, a
plan's look-ahead takes nothing, and no per-name lock outlives its requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from services.job_intake.versions import VersionCounter

pytestmark = pytest.mark.integration


@pytest.fixture
async def names(nc: NATS) -> AsyncIterator[KeyValue]:
    js = nc.jetstream()
    yield await js.create_key_value(bucket="version_counter_test", history=1)
    await js.delete_key_value("version_counter_test")


async def test_two_replicas_under_one_name_never_share_a_number(names: KeyValue) -> None:
    a, b = VersionCounter(names), VersionCounter(names)
    taken = await asyncio.gather(*(counter.take("iris") for _ in range(15) for counter in (a, b)))
    assert sorted(taken) == list(range(1, 31))
    assert (await names.get("iris")).value == b"30"  # the bytes earlier releases wrote and read
    assert (a.names_in_use, b.names_in_use) == (0, 0)


async def test_the_upcoming_number_is_not_taken(names: KeyValue) -> None:
    counter = VersionCounter(names)
    assert await counter.upcoming("new-name") == 1
    await names.put("old-name", b"41")  # as stored before the counter went through kvstore
    assert await counter.upcoming("old-name") == 42
    assert await counter.take("old-name") == 42
    assert await counter.upcoming("old-name") == 43
