"""scheduler: the agent registry (from heartbeats), the queue and placement of pending jobs, the
assignments to agents, lost agents and timeouts, and the job-state changes that come from agents'
reports.  The decisions are pure (``planner``, ``placement``, ``queue``, ``reconcile``, ``trust``: what
it believes from which agent, the state machine); ``view_feed`` follows the buckets into the view,
``handlers`` serves what agents send, ``loop`` places; this module wires them to the bus."""

from __future__ import annotations

import gc
import os
import socket
import uuid

import structlog

from services.scheduler.consumer import PullConsumer
from services.scheduler.handlers import Handlers
from services.scheduler.lease import LeaderLease
from services.scheduler.loop import Scheduler
from services.scheduler.relay import RecordRelay
from trainmaster.bus import responder
from trainmaster.identity import Directory
from trainmaster.jobstore import JobStore
from trainmaster.pubacks import PubAcks
from trainmaster.service import ServiceContext

log = structlog.get_logger()
GC_YOUNG_THRESHOLD = 50_000  # allocations between young collections (Python's default: 700)
FETCH_BATCH = 256  # reports / work items fetched, and handled concurrently, at a time (max ack pending 1000)


async def setup(ctx: ServiceContext) -> None:
    topo = ctx.topo
    # events through the plain JetStream client, and memory of the events of a whole burst;
    # compare-and-sets, events and assignments pipelined on one reply subscription (trainmaster.pubacks):
    # thousands of changes a second
    pipe = await PubAcks(ctx.broker.connection, timeout_s=ctx.settings.bus.publish_timeout_s).start()
    ctx.on_stop.append(_closer(pipe))
    store = await JobStore(ctx.broker, topo, source="scheduler", js=ctx.js, published_memory=100_000,
                           pipe=pipe).open()
    leases = await ctx.broker.key_value(topo.bucket_scheduler.name, declare=False)
    holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    scheduler = Scheduler(ctx, store, pipe=pipe)
    lease = LeaderLease(leases, holder, ctx.settings.scheduler.scheduler_lease_s, on_change=scheduler.wake)
    scheduler.lease = lease
    # who asks for the agents list: any known person may, revoked or unknown credentials may not
    directory = await Directory(await ctx.broker.key_value(topo.bucket_users.name, declare=False)).start()
    ctx.background(directory.follow(), "users")
    handlers = Handlers(ctx, store, scheduler.view, scheduler.commands, scheduler.remember, scheduler.wake,
                        directory)

    # plain nats-py, not a faststream subscriber: a heartbeat is no part of any job's trace
    await ctx.broker.connection.subscribe(topo.agent_heartbeat("*"), cb=handlers.on_heartbeat)

    responder(ctx.broker, topo.agents_list, "scheduler", handlers.on_agents_list)
    await scheduler.feed.load_quotas(await ctx.broker.key_value(topo.bucket_accounts.name, declare=False))
    await scheduler.feed.load()
    # the loaded view (every active record: 100,000 queued jobs are millions of objects) is left
    # out of the collector's walks, and a young collection waits for more allocations: each full
    # walk cost a pass more than the pass itself (docs/benchmarks.md, "Where the scheduler's time goes")
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    # plain pull loops (consumer.py): reports and work items come with every job
    for spec, handle in ((topo.consumer_scheduler_queue, handlers.on_work),
                         (topo.consumer_scheduler_status, handlers.on_report)):
        consumer = PullConsumer(ctx.js, topo, spec, handle, batch_size=FETCH_BATCH, tracing=scheduler.tracing)
        ctx.background(consumer.run(), spec.durable)
    # every replica relays (one durable consumer shares the revisions out): what a writer that
    # died between its compare-and-set and its publish left unannounced
    relay = RecordRelay(ctx.broker.connection, topo, store, settle_s=ctx.settings.scheduler.relay_settle_s)
    ctx.background(relay.run(), topo.consumer_record_relay.durable)
    ctx.background(lease.run(), "leader-lease")
    ctx.background(scheduler.run(), "placement-loop")
    ctx.on_stop.append(lease.release)
    log.info("scheduler replica", holder=holder, lease_s=ctx.settings.scheduler.scheduler_lease_s)


def _closer(pipe: PubAcks):
    async def close() -> None:
        pipe.close()
    return close
