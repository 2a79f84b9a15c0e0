"""The executor agent as a real process, and the scheduler's side of its protocol, for the
integration tests: ``start_agent`` runs ``python -m services.executor_agent``; ``Bus`` publishes
Assign/Cancel commands as the scheduler does and reads the agent's reports, heartbeats and log
lines; ``open_bus`` connects one to a running agent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from trainmaster.auth.credentials import connect_options
from trainmaster.bus import broker_security, provision
from trainmaster.messages import (
    AgentHeartbeat,
    Algorithm,
    Assign,
    Cancel,
    DataSource,
    JobRequest,
    NodeReport,
    encode,
)
from trainmaster.settings import Settings
from trainmaster.topology import Topology

REPO = Path(__file__).resolve().parents[2]
IRIS = REPO / "examples" / "sklearn-iris"
AGENT_ID = "it-agent"
STOP_GRACE_S = 2.0
TOPO = Topology()


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    log_file: Path
    data_dir: Path

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_agent(nats_url: str, tmp_path: Path, name: str = "agent", env: dict[str, str] | None = None,
                agent_id: str = AGENT_ID) -> AgentProcess:
    data_dir = tmp_path / "data"
    log_file = tmp_path / f"{name}.log"
    env = {
        **os.environ,
        "TM_NATS_URL": nats_url,
        "TM_AGENT_ID": agent_id,
        "TM_DATA_DIR": str(data_dir),
        "TM_HEARTBEAT_INTERVAL_S": "0.5",
        "TM_STOP_GRACE_S": str(STOP_GRACE_S),
        **(env or {}),
    }
    with log_file.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.executor_agent"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    return AgentProcess(proc, log_file, data_dir)


@dataclass
class Bus:
    """The scheduler's side of the agent protocol."""

    nc: Client
    js: JetStreamContext
    broker: NatsBroker
    agent_id: str = AGENT_ID
    heartbeats: list[AgentHeartbeat] = field(default_factory=list)
    reports: list[NodeReport] = field(default_factory=list)

    async def send(self, command: Assign | Cancel) -> int:
        """Publish a command to the agent; returns its stream sequence (to wait for its ack)."""
        ack = await self.js.publish(TOPO.agent_control(self.agent_id), encode(command), stream=TOPO.stream_agent.name)
        return ack.seq

    async def report(self, job_id: str, state: str, timeout_s: float = 30.0) -> NodeReport:
        """The first report of ``job_id`` in ``state``, read through the scheduler's consumer.
        Reports read while looking for another one are kept for later calls."""
        deadline = time.monotonic() + timeout_s
        sub = await self.js.pull_subscribe_bind(durable=TOPO.consumer_scheduler_status.durable,
                                                stream=TOPO.stream_agent.name)
        try:
            while True:
                for report in self.reports:
                    if report.job_id == job_id and report.state == state:
                        self.reports.remove(report)
                        return report
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {state!r} report for {job_id} within {timeout_s}s")
                try:
                    messages = await sub.fetch(10, timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                for msg in messages:
                    await msg.ack()
                    self.reports.append(msgspec.json.decode(msg.data, type=NodeReport))
        finally:
            await sub.unsubscribe()

    async def log_lines(self, job_id: str, until: str, timeout_s: float = 30.0, count: int = 0,
                        node: int = 0) -> list[Msg]:
        """The log messages of a node up to the first one containing ``until`` (and at least ``count``)."""
        sub = await self.js.subscribe(TOPO.logs(job_id, str(node)), ordered_consumer=True)
        lines: list[Msg] = []
        seen_until = False
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    msg = await sub.next_msg(timeout=timeout_s)
                    lines.append(msg)
                    if until in msg.data.decode():
                        seen_until = True
                    if seen_until and len(lines) >= count:
                        return lines
        finally:
            await sub.unsubscribe()

    async def heartbeat_with(self, label: str | None, timeout_s: float = 10.0) -> AgentHeartbeat:
        """A heartbeat sent from now on whose running list has ``label`` (or is empty: None)."""
        seen = len(self.heartbeats)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for hb in self.heartbeats[seen:]:
                if (label in hb.running) if label else not hb.running:
                    return hb
            await asyncio.sleep(0.1)
        raise AssertionError(f"no heartbeat with running={label!r} within {timeout_s}s")


@asynccontextmanager
async def open_bus(nats_url: str, agent: AgentProcess, agent_id: str = AGENT_ID,
                   creds: Path | None = None) -> AsyncIterator[Bus]:
    """The scheduler's side (with a service's ``creds`` on a secured server), connected once the
    agent heartbeats."""
    nc = await nats.connect(nats_url, **connect_options(creds))
    js = nc.jetstream()
    await provision(js, TOPO)  # what the services do at start; idempotent
    broker = NatsBroker(nats_url, security=broker_security(Settings(nats_url=nats_url, nats_creds=creds)))
    await broker.connect()
    bus = Bus(nc, js, broker, agent_id)

    async def on_heartbeat(msg: Msg) -> None:
        bus.heartbeats.append(msgspec.json.decode(msg.data, type=AgentHeartbeat))

    await nc.subscribe(TOPO.agent_heartbeat(agent_id), cb=on_heartbeat)
    try:
        try:
            await bus.heartbeat_with(None, timeout_s=30)  # the agent is up
        except AssertionError:
            pytest.fail(f"agent did not come up:\n{agent.output()}")
        yield bus
    finally:
        await broker.stop()
        await nc.close()


# ------------------------------------------------------------------------------ helpers
def assign(job_id: str, spec: JobRequest, attempt: int = 1) -> Assign:
    return Assign(job_id=job_id, attempt=attempt, node=0, node_count=1, spec=spec, name="t", version="V001")


def script_job(tmp_path: Path, body: str, **kwargs: object) -> JobRequest:
    """A framework job whose boot file is ``body``, with an empty data folder."""
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text(textwrap.dedent(body))
    data = tmp_path / "input"
    data.mkdir(exist_ok=True)
    fields: dict[str, object] = {
        "name": "t", "data": [DataSource(path=str(data))],
        "algorithm": Algorithm(source="framework", engine="scikit-learn", code_dir=str(code), boot_file="main.py"),
        "output_path": str(tmp_path / "out"), "log_path": str(tmp_path / "logs"),
    }
    return JobRequest(**{**fields, **kwargs})  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent, the script, has not reaped it)
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())
