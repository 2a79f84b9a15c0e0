"""job-intake's busy durable consumers (``job-intake-submit``: every submission; ``billing``: every
job event) as plain nats-py pull loops instead of faststream subscribers.

Why: faststream's per-message path (middlewares, dependency injection with a worker-thread hop per
message) cost more than the handlers themselves: a fifth of intake's CPU per submission, and as
much again for the billing consumer, which reads every job event to find the few that end a job
(docs/benchmarks.md, "Jobs accepted per second").  The delivery policy stays the one every
consumer shares (``trainmaster.delivery_policy``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from trainmaster.bus import fetch_batch
from trainmaster.delivery_policy import Settler
from trainmaster.topology import ConsumerSpec

log = structlog.get_logger()
BatchHandler = Callable[[list[Msg]], Awaitable[None]]
STOP_GRACE_S = 1.0  # well within a service's whole stop (trainmaster.service)


async def pull_batches(js: JetStreamContext, spec: ConsumerSpec, handle: BatchHandler, *, batch_size: int,
                       in_flight: int = 1) -> None:
    """Fetch batches of the durable consumer ``spec`` and hand each to ``handle`` (which settles its
    messages), with up to ``in_flight`` batches handled at once: the next one is fetched while
    earlier ones wait on the server.  For ever (the consumer is provisioned with the topology)."""
    sub = await js.pull_subscribe_bind(spec.durable, stream=spec.stream)
    running: set[asyncio.Task[None]] = set()
    try:
        while True:
            if len(running) >= in_flight:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            messages = await fetch_batch(sub, batch_size, spec.durable)
            if messages:
                task = asyncio.ensure_future(handle(messages))
                running.add(task)
                task.add_done_callback(running.discard)
    finally:
        # a stop: the batches under way may finish for a moment (what they leave unacked comes
        # again after the ack wait), and the subscription goes, so that draining the connection
        # does not wait on messages fetched for nobody
        if running:
            await asyncio.wait(running, timeout=STOP_GRACE_S)
        for task in running:
            task.cancel()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def each_message(settler: Settler, handle: Callable[[Msg], Awaitable[None]]) -> BatchHandler:
    """A batch handler that runs ``handle`` on every message of a batch concurrently and settles
    each by its own outcome."""

    async def handle_batch(messages: list[Msg]) -> None:
        await asyncio.gather(*(settler.run(msg, lambda msg=msg: handle(msg)) for msg in messages))

    return handle_batch
