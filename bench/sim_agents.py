"""Light simulated agents for the scheduler benchmark: ``--agents`` agents in one process speaking
the agent protocol on the bus.

- heartbeats: every agent every ``--heartbeat-s`` on ``tm.agent.heartbeat.<id>`` (core NATS, spread
  over the interval), with its pool, CPUs, memory and the nodes it runs;
- commands: ``Assign`` / ``Cancel`` from ``tm.agent.control.<id>``.  The real agent has one durable
  consumer per agent; the simulator reads all of them through one durable consumer on
  ``tm.agent.control.>`` (1,000 pull consumers in one process would measure the simulator);
- reports: ``running`` at once for every Assign, ``exited`` (code 0) after the job's run time
  (``parameters.run_s``, default 3600 s), ``exited`` 143 on a Cancel; on ``tm.agent.status.<id>``
  with the agent's ``Nats-Msg-Id`` convention, pipelined (``publish_async``).

It checks what a real host would feel: no agent is ever given more than its CPUs and memory
(over-commits are counted), and no node is assigned twice.  ``bench.sim.stats`` (request/reply)
answers its counters as JSON.  It prints ``ready`` once its consumer exists.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import signal
import sys
import time
from pathlib import Path

import msgspec
import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig

from services.scheduler.placement import Demand, NodeShape, ShapeCatalog
from trainmaster.catalog import load_resources
from trainmaster.messages import AgentCommand, AgentHeartbeat, Assign, NodeReport, encode
from trainmaster.topology import Topology

STATS_SUBJECT = "bench.sim.stats"
DURABLE = "bench-sim-agents"
_decode_command = msgspec.json.Decoder(AgentCommand).decode
RunKey = tuple[str, int, int]  # job, attempt, node


class Sim:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.topo = Topology(prefix=args.prefix)
        self.shapes = ShapeCatalog(load_resources(Path(args.catalog) if args.catalog else None))
        self.ids = [f"sim-{i:05d}" for i in range(args.agents)]
        self.capacity = Demand(args.cpus, args.memory_mb, 0)
        self.used: dict[str, Demand] = {a: Demand() for a in self.ids}
        self.running: dict[str, dict[RunKey, Demand]] = {a: {} for a in self.ids}
        self.seen: set[tuple[str, RunKey]] = set()
        self.exits: list[tuple[float, str, RunKey]] = []
        self.started_at = time.time()
        self.stats = {"assigns": 0, "duplicate_assigns": 0, "cancels": 0, "overcommits": 0, "running_reports": 0,
                      "exit_reports": 0, "publish_errors": 0, "first_assign_at": None, "last_assign_at": None,
                      "cpus_used": 0.0, "cpus_total": args.cpus * args.agents, "overcommit_examples": []}

    async def run(self) -> None:
        self.nc = await nats.connect(self.args.nats, pending_size=512 * 1024 * 1024, max_reconnect_attempts=-1)
        self.js = self.nc.jetstream(publish_async_max_pending=20_000)
        stream = self.topo.stream_agent.name
        config = ConsumerConfig(durable_name=DURABLE, filter_subject=self.topo.agent_control(">"),
                                ack_policy=AckPolicy.EXPLICIT, ack_wait=60, max_ack_pending=100_000)
        await self.js.add_consumer(stream, config)
        self.sub = await self.js.pull_subscribe_bind(DURABLE, stream=stream)
        await self.nc.subscribe(STATS_SUBJECT, cb=self.on_stats)
        print("ready", flush=True)
        await asyncio.gather(self.heartbeats(), self.consume(), self.finish_due())

    # ------------------------------------------------------------------ heartbeats
    async def heartbeats(self) -> None:
        slices = 20
        while True:
            for k in range(slices):
                now = time.time()
                for agent_id in self.ids[k::slices]:
                    hb = AgentHeartbeat(agent_id=agent_id, host=f"host-{agent_id}", pool=self.args.pool, labels={},
                                        cpus=self.args.cpus, memory_mb=self.args.memory_mb, gpus=[],
                                        running=[f"{j}/{n}/{a}" for j, a, n in self.running[agent_id]],
                                        sent_at=now, started_at=self.started_at)
                    await self.nc.publish(self.topo.agent_heartbeat(agent_id), encode(hb))
                await asyncio.sleep(self.args.heartbeat_s / slices)

    # ------------------------------------------------------------------ commands
    async def consume(self) -> None:
        while True:
            try:
                msgs = await self.sub.fetch(1024, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            for msg in msgs:
                agent_id = msg.subject.rsplit(".", 1)[1]
                command = _decode_command(msg.data)
                if isinstance(command, Assign):
                    await self.assign(agent_id, command)
                else:
                    await self.cancel(agent_id, command.job_id, command.attempt)
                await msg.ack()

    def demand_of(self, cmd: Assign) -> Demand:
        shape = self.shapes.shape(cmd.spec.resources)
        return shape.demand if isinstance(shape, NodeShape) else Demand()

    async def assign(self, agent_id: str, cmd: Assign) -> None:
        key = (cmd.job_id, cmd.attempt, cmd.node)
        if (agent_id, key) in self.seen:
            self.stats["duplicate_assigns"] += 1  # a re-sent assignment: the agent answers it again
            return
        self.seen.add((agent_id, key))
        now = time.time()
        self.stats["assigns"] += 1
        self.stats["first_assign_at"] = self.stats["first_assign_at"] or now
        self.stats["last_assign_at"] = now
        demand = self.demand_of(cmd)
        used = self.used[agent_id] + demand
        if not used.fits_in(self.capacity):
            self.stats["overcommits"] += 1
            if len(self.stats["overcommit_examples"]) < 5:
                self.stats["overcommit_examples"].append(f"{agent_id}: {used} > {self.capacity}")
        self.used[agent_id] = used
        self.stats["cpus_used"] += demand.cpus
        self.running[agent_id][key] = demand
        await self.report(agent_id, key, "running")
        run_s = float(cmd.spec.parameters.get("run_s", 3600))
        heapq.heappush(self.exits, (now + run_s, agent_id, key))

    async def cancel(self, agent_id: str, job_id: str, attempt: int | None) -> None:
        self.stats["cancels"] += 1
        for key in [k for k in self.running[agent_id] if k[0] == job_id and (attempt is None or k[1] <= attempt)]:
            await self.end(agent_id, key, 143)

    async def end(self, agent_id: str, key: RunKey, code: int) -> None:
        demand = self.running[agent_id].pop(key, None)
        if demand is None:
            return
        self.used[agent_id] = self.used[agent_id] - demand
        self.stats["cpus_used"] -= demand.cpus
        await self.report(agent_id, key, "exited", code)

    async def finish_due(self) -> None:
        while True:
            now = time.time()
            while self.exits and self.exits[0][0] <= now:
                _, agent_id, key = heapq.heappop(self.exits)
                await self.end(agent_id, key, 0)
            await asyncio.sleep(0.05)

    async def report(self, agent_id: str, key: RunKey, state: str, code: int | None = None) -> None:
        job_id, attempt, node = key
        report = NodeReport(agent_id=agent_id, job_id=job_id, attempt=attempt, node=node, state=state,  # type: ignore[arg-type]
                            exit_code=code)
        future = await self.js.publish_async(self.topo.agent_status(agent_id), encode(report),
                                             stream=self.topo.stream_agent.name,
                                             headers={"Nats-Msg-Id": f"{job_id}.{attempt}.{node}.{state}"})
        future.add_done_callback(self._published)
        self.stats["running_reports" if state == "running" else "exit_reports"] += 1

    def _published(self, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            self.stats["publish_errors"] += 1

    async def on_stats(self, msg) -> None:
        await msg.respond(json.dumps(self.stats).encode())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_agents", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", required=True)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--pool", default="cpu")
    parser.add_argument("--cpus", type=int, default=32)
    parser.add_argument("--memory-mb", type=int, default=256 * 1024)
    parser.add_argument("--heartbeat-s", type=float, default=2.0)
    parser.add_argument("--prefix", default="tm")
    parser.add_argument("--catalog", help="catalog folder (TM_CATALOG_DIR of the scheduler)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        await Sim(args).run()

    try:
        asyncio.run(run())
    except asyncio.CancelledError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
