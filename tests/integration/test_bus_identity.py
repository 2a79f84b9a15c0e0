"""Identities on the bus: a nats-server in operator mode (``secured_nats``) trusts only the
cluster's authority; the services provision the topology with service credentials; an executor
agent runs as a real process with the credentials ``permissions.agent`` grants it, and does its
whole job under them (heartbeats, its own durable consumer, a real node, logs, reports, dead
letters, a distributed rendezvous with another agent) without one permission violation.

Then the attacks: with agent-1's credentials, everything that would read or change the work of
others is refused by nats-server itself, and the client is told so (``nats: permissions
violation for ...`` through its error callback; the message is dropped, a request gets no
answer).  Without credentials nobody connects at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from agent_harness import TOPO, AgentProcess, assign, open_bus, script_job, start_agent
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, StreamConfig
from support import SecuredNats, eventually, subject_count

from trainmaster import bus
from trainmaster.auth.credentials import connect_options
from trainmaster.auth.permissions import agent_inbox
from trainmaster.bus import consumer_config
from trainmaster.messages import (
    AgentHeartbeat,
    Assign,
    DatasetVersion,
    DataSource,
    ManifestFile,
    NodeReport,
    encode,
)

pytestmark = pytest.mark.integration

AGENT = "agent-1"
OTHER = "agent-2"
REQUEST_S = 1.0  # a refused request gets no answer: how long to wait for none


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture
async def service_creds(secured_nats: SecuredNats) -> Path:
    """Service credentials, and the topology provisioned with them (what the services do at start)."""
    creds = secured_nats.service_creds()
    nc = await bus.connect(secured_nats.settings(creds))
    try:
        await bus.provision(nc.jetstream(), TOPO)
    finally:
        await nc.close()
    return creds


@pytest.fixture
async def service(secured_nats: SecuredNats, service_creds: Path) -> AsyncIterator[NATS]:
    nc = await bus.connect(secured_nats.settings(service_creds))
    yield nc
    await nc.close()


def run_agent(secured_nats: SecuredNats, tmp_path: Path, agent_id: str, **env: str) -> AgentProcess:
    creds = secured_nats.agent_creds(agent_id)
    (tmp_path / agent_id).mkdir(parents=True, exist_ok=True)
    return start_agent(secured_nats.url, tmp_path / agent_id, name=agent_id, agent_id=agent_id,
                       env={"TM_NATS_CREDS": str(creds), **env})


class Intruder:
    """A plain connection with agent-1's credentials, collecting what the server tells it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NATS | None = None

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    async def refused(self, what: str, subject: str) -> None:
        """The server's word that ``what`` (publish, subscription) on ``subject`` was refused (nats-py
        lowercases the server's message)."""
        expected = f'nats: permissions violation for {what} to "{subject}"'.lower()
        await eventually(lambda: expected in self.errors, timeout_s=5, what=expected)

    async def request_refused(self, subject: str, attempt: Callable[[], Awaitable[object]]) -> None:
        """A request the server drops: no answer, and the violation reported."""
        with pytest.raises((TimeoutError, NatsTimeoutError)):
            await attempt()
        await self.refused("publish", subject)


@pytest.fixture
async def intruder(secured_nats: SecuredNats, service_creds: Path) -> AsyncIterator[Intruder]:
    who = Intruder()
    # with the agent's own inbox prefix, as the agent connects: a refusal is the target's, not the reply's
    who.nc = await nats.connect(secured_nats.url, error_cb=who.on_error, allow_reconnect=False,
                                inbox_prefix=agent_inbox(AGENT), **connect_options(secured_nats.agent_creds(AGENT)))
    yield who
    await who.nc.close()
    assert who.nc.is_closed


def heartbeat(agent_id: str) -> AgentHeartbeat:
    return AgentHeartbeat(agent_id=agent_id, host="h", pool="cpu", labels={}, cpus=64, memory_mb=1 << 20, gpus=[],
                          running=[], sent_at=0.0, started_at=0.0)


# ------------------------------------------------------------------------------ the agent's own job
NODE_SCRIPT = """\
    import os, sys, time
    data = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--data_url="))
    files = sorted(name for _, _, names in os.walk(data, followlinks=True) for name in names)
    print(f"hello from a node; data: {files}", flush=True)
    time.sleep(1.5)
    print("done", flush=True)
"""


def write_rows(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "rows.csv").write_text("a,b\n1,2\n")


async def publish_dataset(nc: NATS, folder: Path) -> DataSource:
    """A dataset version of ``folder`` (one file), as job-intake publishes it."""
    await asyncio.to_thread(write_rows, folder)
    manifest = DatasetVersion(dataset="ds", version="V001", location=str(folder), created_at=0.0,
                              files=[ManifestFile("rows.csv", 8)], total_bytes=8)
    kv = await nc.jetstream().key_value(TOPO.bucket_dataset_versions.name)
    await kv.create("ds.V001", encode(manifest))
    return DataSource(dataset="ds", version="V001")


async def test_an_agent_does_its_whole_job_with_only_its_own_rights(
        secured_nats: SecuredNats, service_creds: Path, service: NATS, tmp_path: Path) -> None:
    agent = run_agent(secured_nats, tmp_path, AGENT)
    try:
        async with open_bus(secured_nats.url, agent, AGENT, creds=service_creds) as bus_:
            assert bus_.heartbeats[-1].agent_id == AGENT
            dataset = await publish_dataset(service, tmp_path / "dataset")
            await bus_.send(assign("job-own", script_job(tmp_path, NODE_SCRIPT, data=[dataset])))
            running = await bus_.report("job-own", "running")
            assert (running.agent_id, running.attempt, running.node) == (AGENT, 1, 0)
            await bus_.heartbeat_with("job-own/0/1")
            exited = await bus_.report("job-own", "exited")
            assert (exited.exit_code, exited.reason) == (0, None), agent.output()
            lines = await bus_.log_lines("job-own", until="done")
            assert "hello from a node; data: ['rows.csv']" in lines[0].data.decode()
            # a command it can never handle is dead-lettered on its own dead-letter subject
            await bus_.js.publish(TOPO.agent_control(AGENT), b"not a command", stream=TOPO.stream_agent.name)
            durable = TOPO.consumer_agent(AGENT).durable
            await eventually(lambda: subject_count(bus_.nc, TOPO.stream_dlq.name, TOPO.dlq(durable)),
                             what="the dead letter")
        assert agent.terminate() == 0
    finally:
        agent.terminate()
    assert secured_nats.violations() == [], agent.output()


ENV_SCRIPT = """\
    import json, os
    print("ENV " + json.dumps({n: os.environ.get(n) for n in ("RANK", "WORLD_SIZE", "MASTER_PORT")}), flush=True)
"""


async def test_two_agents_meet_for_a_distributed_job(secured_nats: SecuredNats, service_creds: Path,
                                                     tmp_path: Path) -> None:
    agents = [run_agent(secured_nats, tmp_path, a, TM_RENDEZVOUS_TIMEOUT_S="20") for a in (AGENT, OTHER)]
    try:
        async with open_bus(secured_nats.url, agents[0], AGENT, creds=service_creds) as bus_, \
                open_bus(secured_nats.url, agents[1], OTHER, creds=service_creds):
            spec = script_job(tmp_path, ENV_SCRIPT)
            for node, agent_id in ((1, OTHER), (0, AGENT)):
                command = Assign(job_id="job-pair", attempt=1, node=node, node_count=2, spec=spec, name="t",
                                 version="V001", agents=[AGENT, OTHER])
                await bus_.js.publish(TOPO.agent_control(agent_id), encode(command), stream=TOPO.stream_agent.name)
            reports = [await bus_.report("job-pair", "exited", timeout_s=60) for _ in range(2)]
            assert sorted((r.node, r.agent_id, r.exit_code) for r in reports) == [(0, AGENT, 0), (1, OTHER, 0)], [
                a.output()[-2000:] for a in agents]
            envs = [json.loads((await bus_.log_lines("job-pair", until="ENV", node=n))[-1].data.decode()[4:])
                    for n in (0, 1)]
            assert [(e["RANK"], e["WORLD_SIZE"]) for e in envs] == [("0", "2"), ("1", "2")]
            assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"]
    finally:
        for agent in agents:
            agent.terminate()
    assert secured_nats.violations() == []


# ------------------------------------------------------------------------------ attacks
async def test_an_agent_cannot_speak_for_another(intruder: Intruder, service: NATS) -> None:
    heard = await service.subscribe(TOPO.agent_heartbeat(OTHER))
    await service.flush()
    assert intruder.nc is not None
    await intruder.nc.publish(TOPO.agent_heartbeat(OTHER), encode(heartbeat(OTHER)))
    await intruder.refused("publish", TOPO.agent_heartbeat(OTHER))
    forged = NodeReport(agent_id=OTHER, job_id="job-x", attempt=1, node=0, state="exited", exit_code=0)
    js = intruder.nc.jetstream(timeout=REQUEST_S)
    await intruder.request_refused(TOPO.agent_status(OTHER), lambda: js.publish(
        TOPO.agent_status(OTHER), encode(forged), stream=TOPO.stream_agent.name))
    with pytest.raises((TimeoutError, NatsTimeoutError)):
        await heard.next_msg(timeout=0.5)
    assert await subject_count(service, TOPO.stream_agent.name, TOPO.agent_status(OTHER)) == 0


async def test_an_agent_cannot_write_another_agents_rendezvous_entry(intruder: Intruder, service: NATS) -> None:
    """A compromised host cannot point another job's nodes at an address of its choosing: it may
    write only rendezvous keys that end in its own id (and a node believes only the placed agent's)."""
    assert intruder.nc is not None
    bucket = TOPO.bucket_rendezvous.name
    forged = json.dumps({"addr": "10.66.6.6", "port": 6666, "agent_id": OTHER}).encode()
    kv = await intruder.nc.jetstream(timeout=REQUEST_S).key_value(bucket)
    await intruder.request_refused(f"$KV.{bucket}.job-x.1.0.{OTHER}", lambda: kv.put(f"job-x.1.0.{OTHER}", forged))
    own = await kv.put(f"job-x.1.1.{AGENT}", forged)  # its own key: allowed (and not believed for OTHER's node)
    assert own > 0  # the revision
    assert await subject_count(service, f"KV_{bucket}", f"$KV.{bucket}.job-x.1.0.>") == 0


async def test_an_agent_cannot_command_any_agent(intruder: Intruder, service: NATS) -> None:
    assert intruder.nc is not None
    for target in (OTHER, AGENT):
        await intruder.nc.publish(TOPO.agent_control(target), b'{"type": "cancel", "job_id": "j", "reason": "x"}')
        await intruder.refused("publish", TOPO.agent_control(target))
    assert await subject_count(service, TOPO.stream_agent.name, TOPO.agent_control(">")) == 0


async def test_an_agent_cannot_take_another_agents_commands(intruder: Intruder, service: NATS) -> None:
    assert intruder.nc is not None
    js = intruder.nc.jetstream(timeout=REQUEST_S)
    stream = TOPO.stream_agent.name
    mine, theirs = TOPO.consumer_agent(AGENT), TOPO.consumer_agent(OTHER)
    # the other agent's consumer, or its own name with the other's filter
    for durable in (theirs.durable, mine.durable):
        config = ConsumerConfig(name=durable, durable_name=durable, filter_subject=theirs.filter_subject)
        await intruder.request_refused(f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{theirs.filter_subject}",
                                       lambda config=config: js.add_consumer(stream, config))
    # the create subjects that do not carry the filter (the server would take any filter)
    body = json.dumps({"stream_name": stream, "config": {"durable_name": mine.durable,
                                                         "filter_subject": theirs.filter_subject}}).encode()
    for subject in (f"$JS.API.CONSUMER.CREATE.{stream}.{mine.durable}",
                    f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{mine.durable}"):
        await intruder.request_refused(subject, lambda subject=subject: intruder.nc.request(  # type: ignore[union-attr]
            subject, body, timeout=REQUEST_S))
    # its own create subject with another filter in the body: the server holds the two to match
    reply = await intruder.nc.request(f"$JS.API.CONSUMER.CREATE.{stream}.{mine.durable}.{mine.filter_subject}",
                                      body, timeout=5)
    assert json.loads(reply.data)["error"]["description"] == ("Consumer create request did not match filtered subject "
                                                               "from create subject")
    # pulling from, or acknowledging for, the other's consumer
    await bus.ensure_consumer(service.jetstream(), theirs)
    await intruder.request_refused(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{theirs.durable}", lambda: intruder.nc.request(  # type: ignore[union-attr]
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{theirs.durable}", b'{"batch": 1}', timeout=REQUEST_S))
    ack = f"$JS.ACK.{stream}.{theirs.durable}.1.1.1.0.0"
    await intruder.nc.publish(ack, b"+ACK")
    await intruder.refused("publish", ack)
    # what exists is what the services made: agent-1 made nothing
    names = {c.name for c in await service.jetstream().consumers_info(stream)}
    assert theirs.durable in names and mine.durable not in names
    assert (await service.jetstream().consumer_info(stream, theirs.durable)).config.filter_subject == \
        consumer_config(theirs).filter_subject


@pytest.mark.parametrize("subject", [f"{TOPO.prefix}.logs.>", f"{TOPO.prefix}.events.>", TOPO.agent_control(OTHER),
                                     "_INBOX.>", f"$KV.{TOPO.bucket_jobs.name}.>", ">"])
async def test_an_agent_cannot_listen_to_others(intruder: Intruder, subject: str) -> None:
    assert intruder.nc is not None
    await intruder.nc.subscribe(subject)
    await intruder.refused("subscription", subject)


async def test_an_agent_cannot_read_job_records(intruder: Intruder, service: NATS) -> None:
    kv = await service.jetstream().key_value(TOPO.bucket_jobs.name)
    await kv.put("job-secret", b"{}")
    assert intruder.nc is not None
    js = intruder.nc.jetstream(timeout=REQUEST_S)
    bucket = TOPO.bucket_jobs.name
    await intruder.request_refused(f"$JS.API.STREAM.INFO.KV_{bucket}", lambda: js.key_value(bucket))
    direct = f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.job-secret"
    await intruder.request_refused(direct, lambda: intruder.nc.request(direct, b"", timeout=REQUEST_S))  # type: ignore[union-attr]
    await intruder.request_refused(f"$JS.API.STREAM.MSG.GET.KV_{bucket}", lambda: js.get_last_msg(
        f"KV_{bucket}", f"$KV.{bucket}.job-secret"))


async def test_an_agent_cannot_create_delete_or_purge_streams(intruder: Intruder, service: NATS) -> None:
    stream = TOPO.stream_agent.name
    await service.jetstream().publish(TOPO.agent_control(OTHER), b"kept", stream=stream)
    assert intruder.nc is not None
    js = intruder.nc.jetstream(timeout=REQUEST_S)
    await intruder.request_refused("$JS.API.STREAM.CREATE.EVIL", lambda: js.add_stream(
        StreamConfig(name="EVIL", subjects=["evil.>"])))
    await intruder.request_refused(f"$JS.API.STREAM.PURGE.{stream}", lambda: js.purge_stream(stream))
    await intruder.request_refused(f"$JS.API.STREAM.DELETE.{stream}", lambda: js.delete_stream(stream))
    durable = TOPO.consumer_scheduler_status.durable
    await intruder.request_refused(f"$JS.API.CONSUMER.DELETE.{stream}.{durable}",
                                   lambda: js.delete_consumer(stream, durable))
    names = {s.config.name for s in await service.jetstream().streams_info()}
    assert "EVIL" not in names and stream in names
    assert (await service.jetstream().stream_info(stream)).state.messages == 1


async def test_nobody_connects_without_credentials(secured_nats: SecuredNats) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured_nats.url, allow_reconnect=False, connect_timeout=5)
    # nor with credentials the cluster's authority did not sign
    stranger = SecuredNats(secured_nats.url, type(secured_nats.authority).load_or_create(
        secured_nats.creds_dir.parent / "another-authority"), secured_nats.creds_dir / "stranger",
        secured_nats.log_file)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured_nats.url, allow_reconnect=False, connect_timeout=5,
                           **connect_options(stranger.agent_creds(AGENT)))
