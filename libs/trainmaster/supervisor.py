"""``trainmaster up``: the embedded nats-server, the five services and local agents as separate
processes, restarted if they crash, all stopped cleanly (no orphans) on Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats

from trainmaster.bus import provision
from trainmaster.natsd import NatsServer
from trainmaster.procs import child_preexec
from trainmaster.settings import Settings
from trainmaster.topology import Topology

SERVICES = ("job_intake", "validator", "scheduler", "notifier")


@dataclass
class AgentConf:
    agent_id: str
    pool: str = "cpu"
    labels: str = ""


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=child_preexec,
                # own process group: a terminal's Ctrl-C reaches only the supervisor, which then
                # stops the children in order (agents first, nats-server last)
                start_new_session=True,
            )


class Stack:
    def __init__(self, settings: Settings, agents: list[AgentConf], echo=print) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.agents = agents
        self.echo = echo
        self.nats = NatsServer(store_dir=self.data_dir / "nats", host=settings.nats_host, port=settings.nats_port,
                               log_file=self.data_dir / "logs" / "nats-server.log")
        self.children: list[Child] = []
        self.url = ""

    async def start(self) -> str:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            self.nats.launch()  # in this (long-lived) thread: see NatsServer.launch
            self.url = await asyncio.to_thread(self.nats.wait_ready)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(
                f"{exc}. Is another stack using port {self.settings.nats_port}? "
                f"Stop it or choose another port with TM_NATS_PORT. Log: {self.nats.log_file}"
            ) from exc
        nc = await nats.connect(self.url)
        await provision(nc.jetstream(), Topology(self.settings.subject_prefix, self.settings.stream_replicas))
        await nc.close()
        s = self.settings
        base_env = dict(
            os.environ, TM_NATS_URL=self.url, TM_DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1",
            TM_SUBJECT_PREFIX=s.subject_prefix, TM_STREAM_REPLICAS=str(s.stream_replicas),
            TM_LOG_LEVEL=s.log_level, TM_OTEL_EXPORTER=s.otel_exporter,
        )
        if s.otel_file:
            base_env["TM_OTEL_FILE"] = str(s.otel_file)
        for name in SERVICES:
            self.children.append(Child(name, f"services.{name}", base_env,
                                       self.data_dir / "logs" / f"{name.replace('_', '-')}.log"))
        for agent in self.agents:
            env = dict(base_env, TM_AGENT_ID=agent.agent_id, TM_AGENT_POOL=agent.pool, TM_AGENT_LABELS=agent.labels)
            self.children.append(Child(f"agent {agent.agent_id}", "services.executor_agent", env,
                                       self.data_dir / "logs" / f"executor-agent-{agent.agent_id}.log"))
        for child in self.children:
            child.start()
        return self.url

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart a crashed child (at most 5 times a minute, then give up on it loudly)."""
        while not stop.is_set():
            for child in self.children:
                if child.proc is None or child.proc.poll() is None:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60]
                if len(child.restarts) >= 5:
                    self.echo(f"{child.name} keeps crashing (exit {child.proc.returncode}); see {child.log_path}")
                    child.proc = None
                    continue
                self.echo(f"{child.name} exited with {child.proc.returncode}; restarting (log: {child.log_path})")
                child.restarts.append(now)
                child.start()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass

    def stop(self, grace_s: float = 20.0) -> None:
        # agents first, so their jobs are stopped and reported while the bus is still up
        ordered = sorted(self.children, key=lambda c: 0 if c.module.endswith("executor_agent") else 1)
        for group in (ordered[: len(self.agents)], ordered[len(self.agents):]):
            live = [c.proc for c in group if c.proc and c.proc.poll() is None]
            for proc in live:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for proc in live:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.nats.stop()


async def run_until_signalled(stack: Stack, after_start=None) -> None:
    """Start the stack, run ``after_start(url)`` if given, then wait for Ctrl-C / SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await stack.start()
        watcher = asyncio.ensure_future(stack.watch(stop))
        if after_start is not None:
            task = asyncio.ensure_future(after_start(url))
            await asyncio.wait([task, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
            elif task.exception():
                stack.echo(f"error: {task.exception()}")
        await stop.wait()
        await watcher
    finally:
        stack.echo("stopping the stack ...")
        await asyncio.to_thread(stack.stop)
        stack.echo("stopped.")
