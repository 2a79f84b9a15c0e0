"""nats-server processes for a scenario: one server, or a 3-node cluster (R3 streams and buckets),
each on fixed loopback ports so that a killed server comes back on the same port and store."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import nats

from chaos.procs import Managed
from trainmaster.bus import provision
from trainmaster.nats_health import needs_restart
from trainmaster.natsd import server_binary
from trainmaster.topology import Topology


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_config(name: str, store: Path, port: int, http_port: int, cluster: list[int] | None = None,
                  cluster_port: int | None = None, max_file_store: str | None = None) -> str:
    """The shape of deploy/nats/*.conf, on loopback.  ``max_file_store`` is set for a store on a
    small tmpfs: the server would otherwise size its limit from the free space and refuse the
    1 GiB log stream; with it set, the disk really runs out while the server thinks it has room."""
    limit = f", max_file_store: {max_file_store}" if max_file_store else ""
    lines = [f"server_name: {name}", f"listen: 127.0.0.1:{port}", f"http: 127.0.0.1:{http_port}",
             "max_payload: 1MB", f'jetstream {{ store_dir: "{store}"{limit} }}']
    if cluster:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in cluster)
        lines.append(f"cluster {{ name: chaos, listen: 127.0.0.1:{cluster_port}, routes: [{routes}] }}")
    return "\n".join(lines) + "\n"


class NatsNode:
    def __init__(self, name: str, root: Path, env: dict[str, str], *, cluster: list[int] | None = None,
                 cluster_port: int | None = None, store: Path | None = None, max_file_store: str | None = None,
                 restart_delay_s: float = 1.0) -> None:
        self.name = name
        self.port = free_port()
        self.http_port = free_port()
        self.store = store or root / name / "jetstream"
        self.store.mkdir(parents=True, exist_ok=True)
        conf = root / name / "nats.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(server_config(name, self.store, self.port, self.http_port, cluster, cluster_port,
                                      max_file_store))
        self.proc = Managed(name, [server_binary(), "-c", str(conf)], env, root / "logs" / f"{name}.log",
                            restart_delay_s=restart_delay_s, health_check=self.store_needs_restart)

    def store_needs_restart(self) -> str | None:
        return needs_restart(f"http://127.0.0.1:{self.http_port}", self.store)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz?js-enabled-only=true"
            with urllib.request.urlopen(url, timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False


def make_nodes(root: Path, env: dict[str, str], count: int, **kwargs: object) -> list[NatsNode]:
    if count == 1:
        return [NatsNode("nats-1", root, env, **kwargs)]  # type: ignore[arg-type]
    cluster_ports = [free_port() for _ in range(count)]
    return [NatsNode(f"nats-{i + 1}", root, env, cluster=cluster_ports, cluster_port=cluster_ports[i],
                     **kwargs)  # type: ignore[arg-type]
            for i in range(count)]


async def wait_healthy(nodes: list[NatsNode], timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    for node in nodes:
        while not await asyncio.to_thread(node.healthy):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{node.name} not healthy after {timeout_s}s:\n{node.proc.tail()}")
            await asyncio.sleep(0.1)


async def provision_all(urls: str, topo: Topology, timeout_s: float = 60.0) -> None:
    """Provision the topology; on a fresh cluster, retry until the meta leader is elected."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            nc = await nats.connect(urls.split(","), connect_timeout=5)
            try:
                await provision(nc.jetstream(timeout=10), topo)
                return
            finally:
                await nc.close()
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(1)
