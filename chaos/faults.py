"""The faults: each hits the running stack once, waits out its own recovery (a killed process is
started again by the fleet's watcher after ``restart_delay_s``, like systemd's
``Restart=always``), and says exactly what it hit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS

from chaos.procs import Managed
from chaos.stack import AGENT_TIMEOUT_S, Stack
from chaos.webhook import Receiver


@dataclass
class Context:
    stack: Stack
    nc: NATS
    receiver: Receiver
    rng: random.Random
    store_mount: Path | None = None  # the tmpfs of the disk-full fault


Inject = Callable[[Context], Awaitable[str]]


@dataclass(frozen=True)
class Fault:
    name: str
    what: str  # one line for the README and the report
    inject: Inject
    nats_nodes: int = 1
    tmpfs_mb: int = 0  # >0: the nats store lives on a tmpfs of this size


def _one(ctx: Context, name: str) -> Managed:
    (proc,) = ctx.stack.fleet.named(name)
    return proc


def _kill(proc: Managed) -> str:
    pid = proc.pid
    proc.signal(signal.SIGKILL, expect_exit=True)
    return f"{proc.name} (pid {pid})"


async def _wait_restarted(proc: Managed, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    starts = proc.starts
    while proc.starts == starts and time.monotonic() < deadline:  # noqa: ASYNC110 (the watcher restarts it)
        await asyncio.sleep(0.1)


def kill(name: str) -> Inject:
    async def inject(ctx: Context) -> str:
        proc = _one(ctx, name)
        target = _kill(proc)
        await _wait_restarted(proc)
        return target
    return inject


async def _leader_pid(ctx: Context) -> int | None:
    """The pid in the lease holder (``<host>-<pid>-<random>``, services/scheduler/app.py)."""
    with contextlib.suppress(Exception):
        kv = await ctx.nc.jetstream().key_value(ctx.stack.topo.bucket_scheduler.name)
        holder = json.loads((await kv.get("leader")).value)["holder"]
        return int(holder.rsplit("-", 2)[1])
    return None


def kill_scheduler(leader: bool) -> Inject:
    async def inject(ctx: Context) -> str:
        pid = await _leader_pid(ctx)
        replicas = ctx.stack.fleet.named("scheduler-")
        chosen = [p for p in replicas if (p.pid == pid) == leader]
        if pid is None or not chosen:
            raise RuntimeError(f"no scheduler {'leader' if leader else 'follower'} found (lease pid {pid})")
        target = _kill(chosen[0])
        await _wait_restarted(chosen[0])
        return f"{target}, {'leader' if leader else 'follower'}"
    return inject


async def _busy_agent(ctx: Context, timeout_s: float = 20.0) -> Managed:
    """An agent with running nodes (tm.agents.list), the busiest first."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            reply = json.loads((await ctx.nc.request(ctx.stack.topo.agents_list, b"{}", timeout=2)).data)
            busy = sorted((len(a.get("running", [])), a["agent_id"]) for a in reply["agents"] if a.get("running"))
            if busy:
                return _one(ctx, busy[-1][1])
        if time.monotonic() > deadline:
            raise RuntimeError("no agent with running nodes")
        await asyncio.sleep(0.2)


async def kill_agent(ctx: Context) -> str:
    proc = await _busy_agent(ctx)
    target = _kill(proc)
    await _wait_restarted(proc)
    return f"{target}, with running nodes"


async def stop_agent(ctx: Context) -> str:
    proc = await _busy_agent(ctx)
    held_s = AGENT_TIMEOUT_S + 6
    proc.signal(signal.SIGSTOP)
    await asyncio.sleep(held_s)
    proc.signal(signal.SIGCONT)
    return f"{proc.name} (pid {proc.pid}) stopped {held_s:.0f}s, agent timeout {AGENT_TIMEOUT_S:.0f}s"


async def kill_nats(ctx: Context) -> str:
    proc = _one(ctx, "nats-1")
    target = _kill(proc)
    await _wait_restarted(proc)
    return f"{target}, restarted on the same store and port"


async def cluster_node_loss(ctx: Context) -> str:
    proc = ctx.rng.choice(ctx.stack.fleet.named("nats-"))
    proc.held = True
    target = _kill(proc)
    down_s = 10.0
    await asyncio.sleep(down_s)
    proc.held = False
    await _wait_restarted(proc)
    return f"{target} of 3, down {down_s:.0f}s"


async def webhook_down(ctx: Context) -> str:
    down_s = 10.0
    await ctx.receiver.down()
    await asyncio.sleep(down_s)
    await ctx.receiver.up()
    return f"receiver refused connections for {down_s:.0f}s"


async def disk_full(ctx: Context) -> str:
    assert ctx.store_mount is not None
    filler = ctx.store_mount / "filler"
    written = 0
    chunk = b"\0" * (1 << 20)

    def fill() -> int:
        n = 0
        with filler.open("wb") as f:
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
                    f.flush()
                    n += len(chunk)
        return n

    written = await asyncio.to_thread(fill)
    stat = os.statvfs(ctx.store_mount)
    full_s = 10.0
    await asyncio.sleep(full_s)
    filler.unlink()
    return (f"store tmpfs full ({written >> 20} MB filler, {stat.f_bavail * stat.f_frsize >> 10} KB left) "
            f"for {full_s:.0f}s, then freed")


async def kill_billing(ctx: Context) -> str:
    """Kill job-intake the moment a job ends, when the biller (inside job-intake) has work."""
    ended = asyncio.Event()

    async def on_event(msg: object) -> None:
        with contextlib.suppress(ValueError, KeyError, AttributeError):
            if json.loads(msg.data)["data"]["status"] in ("Succeeded", "Failed", "Stopped"):  # type: ignore[attr-defined]
                ended.set()

    sub = await ctx.nc.subscribe(ctx.stack.topo.job_events("*"), cb=on_event)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ended.wait(), 30)
    await sub.unsubscribe()
    proc = _one(ctx, "job-intake")
    target = _kill(proc)
    await _wait_restarted(proc)
    return f"{target} as a job ended (billing runs inside job-intake)"


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("kill-job-intake", "SIGKILL of job-intake (intake, registries and the biller)", kill("job-intake")),
    Fault("kill-validator", "SIGKILL of the validator", kill("validator")),
    Fault("kill-scheduler-leader", "SIGKILL of the scheduler replica holding the lease", kill_scheduler(True)),
    Fault("kill-scheduler-follower", "SIGKILL of the scheduler replica not holding the lease",
          kill_scheduler(False)),
    Fault("kill-notifier", "SIGKILL of the notifier", kill("notifier")),
    Fault("kill-billing", "SIGKILL of billing as a job ends: it runs inside job-intake, so job-intake is killed",
          kill_billing),
    Fault("kill-agent", "SIGKILL of an executor agent with running nodes", kill_agent),
    Fault("stop-agent", "SIGSTOP of an agent with running nodes, longer than the agent timeout, then SIGCONT",
          stop_agent),
    Fault("kill-nats", "SIGKILL of nats-server, restarted on the same store and port", kill_nats),
    Fault("webhook-down", "the webhook receiver refuses connections for 10 s", webhook_down),
    Fault("disk-full", "the nats store's 64 MB tmpfs filled up for 10 s, then freed", disk_full, tmpfs_mb=64),
    Fault("cluster-node-loss", "3-node NATS cluster (R3): SIGKILL of one server, back after 10 s",
          cluster_node_loss, nats_nodes=3),
)}

# the cheapest faults, for the short run inside `make test`
QUICK = ("kill-scheduler-leader", "kill-agent", "kill-job-intake")
