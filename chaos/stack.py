"""One scenario's stack: nats-server(s), job-intake (with billing), validator, two scheduler
replicas, notifier and three executor agents, all subprocesses of the harness (``procs.Fleet``),
with timeouts shortened so that a fault plays out in seconds rather than minutes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError

from chaos import natsd
from chaos.procs import Fleet, Managed
from trainmaster.secretbox import ensure_key_file
from trainmaster.topology import Topology

REPO = Path(__file__).resolve().parents[1]
AGENT_TIMEOUT_S = 6.0  # TM_AGENT_TIMEOUT_S: a SIGSTOPped agent is lost after this
SCHEDULER_LEASE_S = 3.0
AGENT_SLOTS = 4  # CPUs each agent offers; cpu.small takes one

# every setting the suite changes from the defaults, and why
SUITE_ENV = {
    "TM_LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
    "TM_AGENT_TIMEOUT_S": str(AGENT_TIMEOUT_S),
    "TM_SCHEDULER_LEASE_S": str(SCHEDULER_LEASE_S),
    "TM_HEARTBEAT_INTERVAL_S": "1",
    "TM_STOP_GRACE_S": "2",
    "TM_RENDEZVOUS_TIMEOUT_S": "60",
    # the receiver is on loopback; retries within seconds so a receiver outage heals in the run
    "TM_WEBHOOK_ALLOW_PRIVATE": "true",
    "TM_WEBHOOK_TIMEOUT_S": "3",
    "TM_WEBHOOK_RETRY_SCHEDULE_S": "0,1,2,3,5,5,5,5,5,5",
}


@dataclass
class Stack:
    root: Path
    nats_nodes: int = 1
    store_on: Path | None = None  # a (tmpfs) folder for the single server's store
    topic: str = "chaos"
    fleet: Fleet = field(default_factory=Fleet)
    nodes: list[natsd.NatsNode] = field(default_factory=list)
    url: str = ""

    @property
    def topo(self) -> Topology:
        return Topology(replicas=3 if self.nats_nodes == 3 else 1)

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
        # the notifier's key for signing secrets at rest, in a folder of its own (made 0700) as
        # `trainmaster up` keeps it: the data folder itself holds the agents' work folders, which
        # their job user must be able to cross
        key_file = self.root / "data" / "auth" / "secrets.key"
        ensure_key_file(key_file)
        env.update(SUITE_ENV, TM_NATS_URL=self.url, TM_DATA_DIR=str(self.root / "data"),
                   TM_STREAM_REPLICAS=str(self.topo.replicas), TM_SECRETS_KEY_FILE=str(key_file))
        return env

    def service(self, name: str, module: str, **extra: str) -> Managed:
        return Managed(name, [sys.executable, "-m", f"services.{module}"], dict(self.base_env(), **extra),
                       self.root / "logs" / f"{name}.log", cwd=REPO)

    async def start(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        limit = "4GB" if self.store_on else None
        self.nodes = natsd.make_nodes(self.root / "nats", dict(os.environ), self.nats_nodes,
                                      store=self.store_on, max_file_store=limit)
        for node in self.nodes:
            self.fleet.add(node.proc)
        self.url = ",".join(n.url for n in self.nodes)
        await natsd.wait_healthy(self.nodes)
        await natsd.provision_all(self.url, self.topo)
        for name, module in (("job-intake", "job_intake"), ("validator", "validator"), ("scheduler-a", "scheduler"),
                             ("scheduler-b", "scheduler"), ("notifier", "notifier")):
            self.fleet.add(self.service(name, module))
        for i in (1, 2, 3):
            self.fleet.add(self.service(f"agent-{i}", "executor_agent", TM_AGENT_ID=f"agent-{i}",
                                        TM_AGENT_CPUS=str(AGENT_SLOTS), TM_AGENT_MEMORY_MB="16384"))
        self.fleet.watch()
        await self.wait_ready()

    async def connect(self) -> NATS:
        async def quiet(exc: Exception) -> None:  # reconnect errors while a server is down are the point
            pass

        return await nats.connect(self.url.split(","), connect_timeout=5, max_reconnect_attempts=-1,
                                  reconnect_time_wait=0.5, error_cb=quiet)

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Every service answers or pulls, all three agents are registered, a scheduler leads."""
        topo = self.topo
        nc = await self.connect()
        js = nc.jetstream()
        answers = [topo.jobs("list"), topo.agents_list, topo.topics("list")]
        durables = [topo.consumer_intake_submit, topo.consumer_validator, topo.consumer_scheduler_queue,
                    topo.consumer_scheduler_status, topo.consumer_notifier,
                    *(topo.consumer_agent(f"agent-{i}") for i in (1, 2, 3))]
        deadline = time.monotonic() + timeout_s
        try:
            while answers or durables:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"stack not ready after {timeout_s}s: {answers} {[d.durable for d in durables]}")
                for subject in list(answers):
                    with contextlib.suppress(NoRespondersError, NatsTimeoutError, TimeoutError):
                        await nc.request(subject, b"{}", timeout=1)
                        answers.remove(subject)
                for spec in list(durables):
                    with contextlib.suppress(NotFoundError, NatsTimeoutError, TimeoutError):
                        if (await js.consumer_info(spec.stream, spec.durable)).num_waiting > 0:
                            durables.remove(spec)
                await asyncio.sleep(0.2)
            await self._wait_agents(nc, deadline)
        finally:
            await nc.close()

    async def _wait_agents(self, nc: NATS, deadline: float) -> None:
        import json

        while True:
            with contextlib.suppress(NoRespondersError, NatsTimeoutError, TimeoutError):
                reply = json.loads((await nc.request(self.topo.agents_list, b"{}", timeout=2)).data)
                ids = {a["agent_id"] for a in reply.get("agents", [])} - set(reply.get("lost", []))
                if {"agent-1", "agent-2", "agent-3"} <= ids:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("the three agents did not register")
            await asyncio.sleep(0.3)

    async def stop(self) -> None:
        await self.fleet.stop_all()
