"""The shipped nats-server configs (deploy/nats/) with what `trainmaster auth` writes, against real
nats-server processes: every config is valid; a server admits the creds the authority issued, over
TLS with the cluster's CA, and nothing else (no creds, another authority's creds, a client that does
not know the CA); the three cluster nodes route to each other over mutual TLS and replicate, while
a server with a certificate of the same CA for another name cannot join."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from support import REPO, eventually
from tlscerts import make_ca, make_server_cert
from typer.testing import CliRunner

from trainmaster.auth import permissions
from trainmaster.auth.authority import Authority
from trainmaster.auth.credentials import connect_options
from trainmaster.bus import connect, make_broker, provision
from trainmaster.cli.main import app
from trainmaster.client import Client
from trainmaster.natsd import NatsServer, server_binary
from trainmaster.settings import Settings, get_settings
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration
DEPLOY = REPO / "deploy" / "nats"


def auth(*args: str | Path) -> None:
    result = CliRunner().invoke(app, ["auth", *map(str, args)])
    assert result.exit_code == 0, result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Host:
    """One server's /etc/trainmaster and /var/lib/trainmaster, in a test folder."""

    etc: Path
    var: Path

    @property
    def conf(self) -> Path:
        return self.etc / "nats.conf"


def install(conf: Path, root: Path, authority: Path, ca_dir: Path, cert_name: str, dns: tuple[str, ...],
            rewrite: dict[str, str] | None = None) -> Host:
    """What docs/security.md has an operator do on a server: the shipped config, the include file
    from `trainmaster auth server-config`, the CA and the server's own certificate."""
    host = Host(root / "etc", root / "var")
    (host.etc / "tls").mkdir(parents=True)
    text = conf.read_text()
    for old, new in (rewrite or {}).items():
        text = text.replace(old, new)
    text = text.replace("/etc/trainmaster/", f"{host.etc}/").replace("/var/lib/trainmaster/", f"{host.var}/")
    host.conf.write_text(text)
    auth("server-config", "--dir", authority, "--out", host.etc / "nats-auth.conf",
         "--resolver-dir", host.var / "nats-accounts")
    cert = make_server_cert(ca_dir, cert_name, dns, ("127.0.0.1",))
    (host.etc / "tls" / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    (host.etc / "tls" / "server.pem").write_bytes(cert.cert.read_bytes())
    (host.etc / "tls" / "server-key.pem").write_bytes(cert.key.read_bytes())
    return host


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """The key host: the authority, a service's and an admin's creds, the CA."""
    authority = tmp_path / "authority"
    auth("init", "--dir", authority)
    auth("issue", "service", "scheduler", "--dir", authority, "--out", tmp_path / "creds" / "scheduler.creds")
    auth("issue", "admin", "ops", "--dir", authority, "--out", tmp_path / "creds" / "ops.creds")
    make_ca(tmp_path / "ca")
    return tmp_path


# NatsServer gives the store on its command line, which nats-server refuses beside the config's
STARTED = {"store_dir: /var/lib/trainmaster/nats": ""}


def check(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name", ["single.conf", "cluster-node1.conf", "cluster-node2.conf", "cluster-node3.conf"])
def test_every_shipped_config_is_valid_and_secure(keys: Path, name: str) -> None:
    text = (DEPLOY / name).read_text()
    assert 'include "nats-auth.conf"' in text and "http: 127.0.0.1:8222" in text
    assert "handshake_first: true" in text
    assert text.count("tls {") == (2 if "cluster" in name else 1)
    host = install(DEPLOY / name, keys / "host", keys / "authority", keys / "ca", "server",
                   ("nats-1.example.internal",))
    result = check(host.conf)
    assert result.returncode == 0 and "is valid" in result.stderr + result.stdout, result.stderr
    (host.etc / "tls" / "server.pem").unlink()
    assert check(host.conf).returncode != 0  # the check does read the certificates


def test_the_documented_certificate_commands_make_what_the_servers_need(tmp_path: Path) -> None:
    doc = (REPO / "docs" / "security.md").read_text()
    script = doc.split("## Certificates with openssl", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    tls = tmp_path / "tls"
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    for n in (1, 2, 3):
        assert (tls / f"nats-{n}.example.internal.pem").is_file()
        assert stat.S_IMODE((tls / f"nats-{n}.example.internal-key.pem").stat().st_mode) == 0o600


@pytest.fixture
def single(keys: Path) -> Iterator[str]:
    host = install(DEPLOY / "single.conf", keys / "host", keys / "authority", keys / "ca", "server",
                   ("localhost",), STARTED)
    server = NatsServer(store_dir=host.var / "nats", port=-1, config_file=host.conf,
                        log_file=keys / "nats-server.log")
    server.start()
    try:
        yield server.url.replace("nats://", "tls://")
    finally:
        server.stop()


async def refused(url: str, **options: object) -> Exception:
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3, **options)
    except Exception as exc:
        return exc
    await nc.close()
    raise AssertionError(f"{url} admitted a connection with {sorted(options)}")


async def test_a_server_admits_the_authority_s_creds_over_tls_and_nothing_else(keys: Path, single: str) -> None:
    ca = keys / "ca" / "ca.pem"
    settings = Settings(nats_url=single, nats_creds=keys / "creds" / "scheduler.creds", nats_ca_file=ca)
    nc = await connect(settings, connect_timeout=5)
    try:
        assert nc.connected_url is not None and nc.connected_url.scheme == "tls"
        await provision(nc.jetstream(), Topology())  # JetStream in the services' account
        kv = await nc.jetstream().key_value(Topology().bucket_jobs.name)
        await kv.put("probe", b"1")
    finally:
        await nc.close()

    broker = make_broker("scheduler", settings)
    await broker.connect()
    try:
        assert broker.config.connection_state.connection.is_connected
    finally:
        await broker.stop()

    async with Client(single, creds=keys / "creds" / "ops.creds", ca_file=ca) as client:
        assert client.nc is not None and (await client.nc.jetstream().account_info()).streams > 0

    assert "Authorization Violation" in str(await refused(single, **connect_options(None, ca)))
    stranger = Authority.load_or_create(keys / "another-authority")
    (keys / "stranger.creds").write_text(stranger.issue("scheduler", "TM", permissions.service()))
    assert "Authorization Violation" in str(await refused(single, **connect_options(keys / "stranger.creds", ca)))
    # a client that trusts the system's CAs only cannot tell this server from an impostor
    assert isinstance(await refused(single, tls=ssl.create_default_context(), tls_handshake_first=True,
                                    **connect_options(keys / "creds" / "scheduler.creds")),
                      ssl.SSLCertVerificationError)


async def test_a_client_given_the_ca_never_talks_to_a_server_in_the_clear(keys: Path, nats_server: str) -> None:
    """A server without TLS (or someone pretending to be the cluster) gets no signed nonce: the
    client starts with the TLS handshake, which such a server cannot answer."""
    url = nats_server.replace("nats://", "tls://")
    assert isinstance(await refused(url, **connect_options(keys / "creds" / "scheduler.creds", keys / "ca" / "ca.pem")),
                      ssl.SSLError)


def test_the_cli_connects_with_the_creds_and_ca_of_its_environment(keys: Path, single: str) -> None:
    env = {"TM_NATS_URL": single, "TM_NATS_CREDS": str(keys / "creds" / "ops.creds"),
           "TM_NATS_CA_FILE": str(keys / "ca" / "ca.pem")}

    def trainmaster(*args: str, **changes: str | None):
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(app, list(args), env={**env, **changes})
        finally:
            get_settings.cache_clear()

    result = trainmaster("provision")
    assert result.exit_code == 0 and "provisioned" in result.output, result.output
    refused = trainmaster("agent", "list", TM_NATS_CREDS=None)
    assert refused.exit_code == 3 and "refused this client" in " ".join(refused.stderr.split()), refused.output


# ------------------------------------------------------------------------------ the cluster
@dataclass
class Node:
    name: str
    client_port: int
    route_port: int
    server: NatsServer | None = None


def monitor(server: NatsServer, what: str) -> dict:
    with urllib.request.urlopen(f"{server.monitor_url}/{what}", timeout=2) as reply:
        return json.loads(reply.read())


def routes(server: NatsServer) -> list[dict]:
    return monitor(server, "routez").get("routes") or []


def varz(server: NatsServer) -> dict:
    return monitor(server, "varz")


async def test_the_cluster_nodes_route_over_mutual_tls_and_admit_no_other_server(keys: Path) -> None:
    nodes = [Node(f"tm-nats-{n}", free_port(), free_port()) for n in (1, 2, 3)]
    # on one host every node is "localhost": the routes keep their names, the ports differ
    rewrite = {**STARTED, "listen: 0.0.0.0:6222": "listen: 127.0.0.1:{route}"}
    for n, node in enumerate(nodes, start=1):
        rewrite[f"nats-{n}.example.internal:6222"] = f"localhost:{node.route_port}"
        rewrite[f"nats-{n}.example.internal:4222"] = f"localhost:{node.client_port}"
    for n, node in enumerate(nodes, start=1):
        host = install(DEPLOY / f"cluster-node{n}.conf", keys / node.name, keys / "authority", keys / "ca",
                       node.name, ("localhost",),
                       {k: v.format(route=node.route_port) for k, v in rewrite.items()})
        node.server = NatsServer(store_dir=host.var / "nats", port=node.client_port, config_file=host.conf,
                                 log_file=keys / f"{node.name}.log")
    intruder_route = free_port()
    intruder = install(DEPLOY / "cluster-node1.conf", keys / "intruder", keys / "authority", keys / "ca", "intruder",
                       ("intruder.example.internal",),
                       {"server_name: tm-nats-1": "server_name: tm-intruder",
                        "advertise: nats-1.example.internal:6222": f"advertise: localhost:{intruder_route}",
                        **{k: v.format(route=intruder_route) for k, v in rewrite.items()}})
    intruder_server = NatsServer(store_dir=intruder.var / "nats", port=free_port(), config_file=intruder.conf,
                                 log_file=keys / "intruder.log")
    servers = [node.server for node in nodes if node.server] + [intruder_server]
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready(30)
        first = nodes[0].server
        assert first is not None
        await eventually(lambda: {r.get("remote_name") for r in routes(first)} == {"tm-nats-2", "tm-nats-3"},
                         timeout_s=20, what="routes to the other two nodes")
        cluster = varz(first)["cluster"]
        assert cluster["tls_required"] and cluster["tls_verify"], cluster

        ca = keys / "ca" / "ca.pem"
        creds = keys / "creds" / "scheduler.creds"
        topo = Topology(replicas=3)

        async def provisioned() -> bool:
            nc = await connect(Settings(nats_url=f"tls://localhost:{nodes[0].client_port}", nats_creds=creds,
                                        nats_ca_file=ca), connect_timeout=5)
            try:
                await provision(nc.jetstream(), topo)
                kv = await nc.jetstream().key_value(topo.bucket_jobs.name)
                await kv.put("probe", b"replicated")
                return True
            except Exception:  # the meta leader is still being elected
                return False
            finally:
                await nc.close()

        await eventually(provisioned, timeout_s=30, interval_s=0.5, what="R3 provisioning")
        nc = await connect(Settings(nats_url=f"tls://localhost:{nodes[2].client_port}", nats_creds=creds,
                                    nats_ca_file=ca), connect_timeout=5)
        try:
            info = await nc.jetstream().stream_info(f"KV_{topo.bucket_jobs.name}")
            assert info.config.num_replicas == 3
            kv = await nc.jetstream().key_value(topo.bucket_jobs.name)
            assert (await kv.get("probe")).value == b"replicated"
        finally:
            await nc.close()

        logs = [keys / f"{node.name}.log" for node in nodes]
        await eventually(lambda: all("Authentication Failure" in log.read_text() for log in logs), timeout_s=20,
                         what="every node refusing the intruder's route")
        await asyncio.sleep(0.5)
        assert routes(intruder_server) == []
        assert {r.get("remote_name") for r in routes(first)} == {"tm-nats-2", "tm-nats-3"}
    finally:
        for server in servers:
            server.stop()
