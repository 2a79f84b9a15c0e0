"""The rendezvous of a distributed job: before any node starts, each node's agent picks a free port
on its host and writes ``{"addr", "port", "agent_id"}`` under ``<job>.<attempt>.<node>.<agent>`` in
the KV bucket ``tm_rendezvous``; then it waits until every node of the attempt has written its entry.

Whose entries count: the Assign names the agent placed on each node, and a node reads node *n*'s
entry only under that agent's key (and only with that agent id inside).  An agent's credentials let
it write only keys ending in its own id (auth/permissions.py), so a compromised host cannot point
another job's nodes at an address of its choosing.

Why this way: rank 0's port must be known to every node *before* they start, and only rank 0's
agent can pick a port that is free on its host.  A port derived from the job id would collide
sooner or later; the scheduler cannot know which ports are free on a host.  The wait doubles as a start
barrier: no node starts training (and no clock starts ticking on ``init_process_group``'s
timeout) while another is still downloading data or building its runtime.  Every node's own
address and port also make up ``TF_CONFIG``'s worker list.

The wait ends when all nodes are there, when the node is stopped (Cancel, agent shutdown: the
agent cancels the wait), or
after ``TM_RENDEZVOUS_TIMEOUT_S`` with a reason that names the missing nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from urllib.parse import urlparse

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from services.executor_agent.launch import Peer, RunKey

POLL_S = 0.2


class RendezvousFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def free_port(host: str = "") -> int:
    """A port free on every interface now (the process binds it a moment later: a small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def advertised_addr(nats_url: str, configured: str | None) -> str:
    """The address peers reach this host at: ``TM_AGENT_ADDR``, else the local address of the route
    towards the NATS server (an agent that reaches the bus is reachable where the bus is)."""
    if configured:
        return configured
    first = nats_url.split(",")[0].strip()
    host = urlparse(first if "://" in first else f"nats://{first}").hostname or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((socket.gethostbyname(host), 4222))  # UDP: nothing is sent
            return str(sock.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def entry_key(key: RunKey, node: int, agent_id: str) -> str:
    return f"{key.job_id}.{key.attempt}.{node}.{agent_id}"


def believed(value: bytes | None, agent_id: str) -> Peer | None:
    """A node's entry, if it is one and names the agent placed there (else: not there yet)."""
    if not value:
        return None
    try:
        peer = msgspec.json.decode(value, type=Peer)
    except msgspec.DecodeError:
        return None
    return peer if peer.agent_id == agent_id else None


class Rendezvous:
    def __init__(self, js: JetStreamContext, bucket: str, timeout_s: float) -> None:
        self.js = js
        self.bucket = bucket
        self.timeout_s = timeout_s

    async def meet(self, key: RunKey, agents: tuple[str, ...], me: Peer) -> list[Peer]:
        """Publish this node's entry and return every node's, in node order (a stop cancels the wait).
        ``agents``: the agent placed on each node (the Assign's)."""
        node_count = len(agents)
        if node_count < 2 or agents[key.node] != me.agent_id:
            raise RendezvousFailed(f"the assignment names no agent for each of the job's nodes, or not this one "
                                   f"for node {key.node}: {list(agents)} (a scheduler older than this agent?)")
        kv = await self.js.key_value(self.bucket)
        await kv.put(entry_key(key, key.node, me.agent_id), msgspec.json.encode(me))
        peers: dict[int, Peer] = {key.node: me}
        deadline = time.monotonic() + self.timeout_s
        while len(peers) < node_count:
            for node in range(node_count):
                if node in peers:
                    continue
                with contextlib.suppress(KeyNotFoundError):
                    entry = await kv.get(entry_key(key, node, agents[node]))
                    peer = believed(entry.value, agents[node])
                    if peer is not None:
                        peers[node] = peer
            if len(peers) == node_count:
                break
            if time.monotonic() > deadline:
                missing = ", ".join(str(n) for n in range(node_count) if n not in peers)
                raise RendezvousFailed(f"distributed start timed out after {self.timeout_s:.0f} s: node(s) "
                                       f"{missing} never got ready (placed, staged, runtime built)")
            await asyncio.sleep(POLL_S)
        return [peers[n] for n in range(node_count)]
