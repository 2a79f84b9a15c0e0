"""The shell every service runs in: settings, logs, traces, broker, provisioning, signals.

A service module provides ``setup(ctx) -> None`` (register subscribers, open stores) and
optionally background tasks; ``run_service`` does the rest and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from trainmaster.bus import make_broker, provision_when_ready
from trainmaster.settings import Settings, get_settings
from trainmaster.telemetry import configure_logging, configure_tracing
from trainmaster.topology import Topology


@dataclass
class ServiceContext:
    name: str
    settings: Settings
    topo: Topology
    broker: NatsBroker
    log: structlog.stdlib.BoundLogger
    tasks: list[asyncio.Task] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def js(self) -> JetStreamContext:
        return self.broker.config.connection_state.stream

    def background(self, coro: Awaitable[None], name: str) -> None:
        """Run ``coro`` for the life of the service; a crash of it is logged, then the service
        stops (a supervisor restarts it) rather than limping on half-alive."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.append(task)


Setup = Callable[[ServiceContext], Awaitable[None]]
InboxOf = Callable[[Settings], str]


async def serve(name: str, setup: Setup, settings: Settings | None = None, *, provisions: bool = True,
                inbox_of: InboxOf | None = None) -> None:
    """``provisions``: the service creates or updates the topology before its setup (an executor
    agent may not: its credentials allow only its own consumer).  ``inbox_of``: the inbox prefix
    of a process whose credentials allow it only its own inboxes."""
    settings = settings or get_settings()
    log = configure_logging(name, settings.observability.log_level)
    provider = configure_tracing(name, settings)
    topo = Topology(prefix=settings.bus.subject_prefix, replicas=settings.bus.stream_replicas)
    broker = make_broker(name, settings, provider, inbox_prefix=inbox_of(settings) if inbox_of else None)
    await broker.connect()
    ctx = ServiceContext(name=name, settings=settings, topo=topo, broker=broker, log=log)
    if provisions:
        await provision_when_ready(ctx.js, topo)
    await setup(ctx)
    await broker.start()
    log.info("service started", nats=settings.bus.nats_url)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.ensure_future(stop.wait()), *ctx.tasks]
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not waiters[0] and not t.cancelled() and t.exception()]
    for task in failed:
        log.error("background task crashed", task=task.get_name(), error=repr(task.exception()))
    log.info("service stopping")
    try:
        # bounded: a hook or a drain that waits on a request while nats-server goes away (the
        # stack stops it last, but a supervisor's patience is finite) must not hold the stop up
        await asyncio.wait_for(stop_service(ctx), settings.bus.shutdown_grace_s)
    except TimeoutError:
        log.warning("stop took too long; exiting anyway", grace_s=settings.bus.shutdown_grace_s)
        await close_quickly(broker)
    if provider is not None:
        provider.shutdown()
    log.info("service stopped")
    if failed:
        raise SystemExit(1)


async def stop_service(ctx: ServiceContext) -> None:
    """Stop hooks, then the background tasks, then the broker (in-flight handlers, drain)."""
    for hook in ctx.on_stop:
        try:
            await hook()
        except Exception:
            ctx.log.exception("stop hook failed")
    for task in ctx.tasks:
        task.cancel()
    await asyncio.gather(*ctx.tasks, return_exceptions=True)
    await ctx.broker.stop()


async def close_quickly(broker: NatsBroker) -> None:
    """Close the connection without draining it (a stop that ran out of time)."""
    connection = broker._connection  # None once broker.stop got that far
    if connection is not None and not connection.is_closed:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 0.5)


def run_service(name: str, setup: Setup, *, provisions: bool = True, inbox_of: InboxOf | None = None) -> None:
    asyncio.run(serve(name, setup, provisions=provisions, inbox_of=inbox_of))
