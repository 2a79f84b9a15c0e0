"""Reads and compare-and-set writes on JetStream KV, written once.

Every record a service keeps in a bucket (accounts, templates, datasets, topics, request claims,
name counters) changes the same way: read the value at a revision, decide the new value from it,
write at that revision; a writer that lost the race reads again and decides again.  ``change``
is that loop, bounded: a key fought over by more writers than ``attempts`` gives up with
``ChangeConflict`` instead of spinning.  Job records go through ``JobStore.apply`` (the state
machine, with its events) — the same loop with more to do on each turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec
from nats.js.errors import APIError, InvalidKeyError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

T = TypeVar("T")

WRONG_LAST_SEQUENCE = (10071, 10164)  # the server's error codes for a compare-and-set that lost
CHANGE_ATTEMPTS = 50  # lost races before ``change`` gives up: far more writers than one key ever has


class ChangeConflict(RuntimeError):
    """Other writers kept changing the key between this writer's read and its write."""


@dataclass(frozen=True)
class Stored(Generic[T]):
    value: T
    revision: int


@dataclass(frozen=True)
class Changed(Generic[T]):
    """What ``change`` left in the bucket: the value (None: absent and left absent), its revision,
    and whether this call wrote it."""

    value: T | None
    revision: int
    written: bool


async def read(kv: KeyValue, key: str, decode: Callable[[bytes], T]) -> Stored[T] | None:
    """The value at ``key`` and its revision; None when there is none (never written, deleted, or
    a key the bucket cannot hold, which therefore holds nothing)."""
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, InvalidKeyError):
        return None
    if not entry.value:
        return None
    return Stored(decode(entry.value), entry.revision or 0)


async def change(kv: KeyValue, key: str, decide: Callable[[T | None], T | None], *,
                 decode: Callable[[bytes], T], encode: Callable[[T], bytes] = msgspec.json.encode,
                 attempts: int = CHANGE_ATTEMPTS, known: Stored[T] | None = None) -> Changed[T]:
    """Write ``decide(current)`` at the revision ``current`` was read at (created when the key has
    no value).  ``decide`` gets None for an absent key; it returns None to write nothing, and may
    raise to refuse (the exception reaches the caller, nothing written).  A lost race calls
    ``decide`` again on the fresh value, so it must be a pure function of its argument.
    ``known``: the value as the caller just read or wrote it, decided on instead of a first read
    (a stale one costs a lost race, no more)."""
    for _ in range(attempts):
        found, known = (known, None) if known is not None else (await read(kv, key, decode), None)
        current = found.value if found is not None else None
        updated = decide(current)
        if updated is None:
            return Changed(current, found.revision if found is not None else 0, written=False)
        try:
            if found is None:
                revision = await kv.create(key, encode(updated))
            else:
                revision = await kv.update(key, encode(updated), last=found.revision)
        except KeyWrongLastSequenceError:
            continue  # somebody else wrote first: decide again on fresh state
        return Changed(updated, revision, written=True)
    raise ChangeConflict(f"{key}: gave up after {attempts} compare-and-set conflicts")


async def remove(kv: KeyValue, key: str, check: Callable[[T], None], *, decode: Callable[[bytes], T],
                 attempts: int = CHANGE_ATTEMPTS) -> T | None:
    """Delete ``key`` at the revision its value was read and ``check``ed at (``check`` raises to
    refuse); the value removed, or None when there was none.  A lost race checks again."""
    for _ in range(attempts):
        found = await read(kv, key, decode)
        if found is None:
            return None
        check(found.value)
        if await delete_at(kv, key, found.revision):
            return found.value
    raise ChangeConflict(f"{key}: gave up after {attempts} compare-and-set conflicts")


async def create(kv: KeyValue, key: str, value: bytes) -> int | None:
    """Write ``value`` only when ``key`` holds nothing; its revision, or None when it held a value."""
    try:
        return await kv.create(key, value)
    except KeyWrongLastSequenceError:
        return None


async def delete_at(kv: KeyValue, key: str, revision: int) -> bool:
    """Delete ``key`` if it is still at ``revision``; False when it changed meanwhile.  (nats-py's
    ``delete`` passes the server's "wrong last sequence" on as a plain APIError, unlike ``update``.)"""
    try:
        await kv.delete(key, last=revision)
    except APIError as err:
        if isinstance(err, KeyWrongLastSequenceError) or err.err_code in WRONG_LAST_SEQUENCE:
            return False
        raise
    return True


async def values(kv: KeyValue, keys: str = ">", timeout_s: float = 10.0) -> list[bytes]:
    """The current value of every key matching ``keys``, in key order (one watch over the bucket,
    not a get per key; deleted keys left out)."""
    found = await _watch_values(kv, keys, timeout_s)
    if not found and (await kv.status()).values > 0:
        # an empty answer from a bucket that holds messages was seen once under load (the watch
        # ended its initial values before any came; likely nats-py's pending count racing the new
        # consumer): ask once more
        await asyncio.sleep(0.05)
        found = await _watch_values(kv, keys, timeout_s)
    return found


async def _watch_values(kv: KeyValue, keys: str, timeout_s: float) -> list[bytes]:
    watcher = await kv.watch(keys, include_history=False)
    found: dict[str, bytes] = {}
    try:
        while True:
            entry = await watcher.updates(timeout=timeout_s)
            if entry is None:
                break
            if entry.value and entry.operation not in ("DEL", "PURGE"):
                found[entry.key] = entry.value
            else:
                found.pop(entry.key, None)
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
    return [found[key] for key in sorted(found)]
