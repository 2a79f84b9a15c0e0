"""The distributed launch on the agent protocol: nodes meet in the ``tm_rendezvous`` bucket before
they start and get the same master, their ranks and TF_CONFIG; a node whose peers never come fails
with a clear reason; a Cancel ends the wait at once."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_harness import TOPO, AgentProcess, Bus, open_bus, script_job, start_agent

from trainmaster.messages import Assign, Cancel, JobRequest
from trainmaster.natsd import NatsServer

pytestmark = pytest.mark.integration

ENV_SCRIPT = """\
    import json, os
    names = ["WORLD_SIZE", "RANK", "NODE_RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TF_CONFIG"]
    print("ENV " + json.dumps({n: os.environ.get(n) for n in names}), flush=True)
"""


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    server = NatsServer(store_dir=tmp_path / "nats", port=-1)
    yield server.start()
    server.stop()


@pytest.fixture
def agent(nats_url: str, tmp_path: Path) -> Iterator[AgentProcess]:
    handle = start_agent(nats_url, tmp_path, env={"TM_RENDEZVOUS_TIMEOUT_S": "3"})
    yield handle
    handle.terminate()


@pytest.fixture
async def bus(nats_url: str, agent: AgentProcess) -> AsyncIterator[Bus]:
    async with open_bus(nats_url, agent) as connected:
        yield connected


def node(job_id: str, spec: JobRequest, node: int, count: int, agents: list[str] | None = None) -> Assign:
    return Assign(job_id=job_id, attempt=1, node=node, node_count=count, spec=spec, name="t", version="V001",
                  agents=agents or ["it-agent"] * count)


async def test_the_nodes_meet_and_share_one_master(bus: Bus, tmp_path: Path) -> None:
    spec = script_job(tmp_path, ENV_SCRIPT)
    for n in (1, 0):  # the order does not matter: each waits for the other
        await bus.send(node("job-pair", spec, n, 2))
    envs = {}
    for n in (0, 1):
        exited = await bus.report("job-pair", "exited")
        assert exited.exit_code == 0, exited.reason
        lines = await bus.log_lines("job-pair", until="ENV", node=n)
        envs[n] = json.loads(lines[-1].data.decode().removeprefix("ENV "))
        notes = [m.data.decode() for m in lines if m.headers["Tm-Stream"] == "trainmaster"]
        assert notes[0].startswith("[trainmaster] waiting for the other 1 nodes (this node: 127.0.0.1:")
        assert notes[-1].startswith("[trainmaster] all 2 nodes ready; master 127.0.0.1:")
    assert envs[0]["MASTER_ADDR"] == envs[1]["MASTER_ADDR"] == "127.0.0.1"
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"]
    assert [(e["RANK"], e["NODE_RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"]) for e in (envs[0], envs[1])] == [
        ("0", "0", "0", "2"), ("1", "1", "0", "2")]
    tf = [json.loads(envs[n]["TF_CONFIG"]) for n in (0, 1)]
    assert tf[0]["cluster"] == tf[1]["cluster"] and len(tf[0]["cluster"]["worker"]) == 2
    assert tf[0]["cluster"]["worker"][0] == f"127.0.0.1:{envs[0]['MASTER_PORT']}"
    assert (tf[0]["task"], tf[1]["task"]) == ({"type": "worker", "index": 0}, {"type": "worker", "index": 1})
    kv = await bus.js.key_value(TOPO.bucket_rendezvous.name)
    assert json.loads((await kv.get("job-pair.1.1.it-agent")).value)["agent_id"] == "it-agent"


async def test_only_the_placed_agents_entries_count(bus: Bus, tmp_path: Path) -> None:
    """Node 1 is placed on agent "other": an entry under this agent's key for node 1, or one under
    "other"'s key that names another agent, is not believed; the node waits, then fails."""
    kv = await bus.js.key_value(TOPO.bucket_rendezvous.name)
    forged = json.dumps({"addr": "10.66.6.6", "port": 6666, "agent_id": "it-agent"}).encode()
    await kv.put("job-forged.1.1.it-agent", forged)  # node 1 is not this agent's
    await kv.put("job-forged.1.1.other", forged)  # "other"'s key, naming someone else
    await bus.send(node("job-forged", script_job(tmp_path, "print('never')\n"), 0, 2, ["it-agent", "other"]))
    exited = await bus.report("job-forged", "exited", timeout_s=30)
    assert exited.exit_code == 1
    assert "node(s) 1 never got ready" in exited.reason


async def test_a_node_whose_peers_never_come_fails_with_a_reason(bus: Bus, tmp_path: Path) -> None:
    await bus.send(node("job-alone", script_job(tmp_path, "print('never')\n"), 0, 3))
    exited = await bus.report("job-alone", "exited", timeout_s=30)
    assert exited.exit_code == 1
    assert exited.reason == ("distributed start timed out after 3 s: node(s) 1, 2 never got ready "
                             "(placed, staged, runtime built)")


async def test_a_cancel_ends_the_wait_at_once(bus: Bus, tmp_path: Path) -> None:
    await bus.send(node("job-waiting", script_job(tmp_path, "print('never')\n"), 1, 2))
    await bus.log_lines("job-waiting", until="waiting for the other", node=1)
    started = time.monotonic()
    await bus.send(Cancel(job_id="job-waiting", reason="node 0 failed"))
    exited = await bus.report("job-waiting", "exited", timeout_s=30)
    assert (exited.exit_code, exited.reason) == (143, "stopped: node 0 failed")
    assert time.monotonic() - started < 2.5  # well before the 3 s rendezvous timeout
    await bus.heartbeat_with(None)
