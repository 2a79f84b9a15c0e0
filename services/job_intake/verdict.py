"""Waiting for the validator's verdict on a job just accepted, so that the reply to ``create`` (and
``new_version``) carries the violations of an invalid job."""

from __future__ import annotations

import time

import msgspec

from trainmaster.bus import error_reply
from trainmaster.jobstore import JobStore
from trainmaster.messages import JobRecord, Status, encode, summary_of

_decode_record = msgspec.json.Decoder(JobRecord).decode


async def await_verdict(store: JobStore, record: JobRecord, wait_s: float) -> JobRecord:
    """The record once the validator moved it out of Initializing, or as it is after ``wait_s``
    (0: do not wait)."""
    if record.status != Status.INITIALIZING or wait_s <= 0:
        return record
    watcher = await store.kv.watch(record.id, include_history=False)  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                entry = await watcher.updates(timeout=left)
            except TimeoutError:
                break
            if entry is None or entry.value is None:
                continue
            latest = _decode_record(entry.value)
            if latest.status != Status.INITIALIZING:
                return latest
    finally:
        await watcher.stop()
    return (await store.find(record.id)) or record


def verdict_reply(record: JobRecord) -> bytes:
    """The job's summary; for a job the validator failed, an error that lists its violations."""
    if record.status == Status.FAILED and record.violations:
        return error_reply("validation_failed", record.failure_reason or "the job is not valid",
                           record.violations, job=summary_of(record))
    return encode(summary_of(record))
