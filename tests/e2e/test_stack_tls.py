"""The embedded stack (``trainmaster.supervisor.Stack``, what ``trainmaster up --tls`` runs) with TLS
on: nats-server serves a certificate of the CA the stack made, a client without TLS is refused, the
services and the CLI (which finds the CA by itself, as it finds the admin's creds) work over it, and
a server certificate due for renewal is issued again and served without a restart; a certificate
of one's own is served instead when given."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import nats
import pytest
from cryptography import x509
from nats.errors import Error as NatsError
from support import REPO, LoopThread, eventually

from trainmaster.auth.credentials import connect_options
from trainmaster.auth.localtls import LocalTls
from trainmaster.client import ApiError, Client
from trainmaster.settings import Settings
from trainmaster.supervisor import Stack

pytestmark = pytest.mark.e2e

CLI = str(Path(sys.executable).parent / "trainmaster")


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, LoopThread]]:
    data_dir = tmp_path_factory.mktemp("tls-stack")
    # Stack.start runs nats-server from a worker thread of its event loop, and its children die
    # with the thread that started them (PR_SET_PDEATHSIG): keep that loop alive all along
    loop = LoopThread()
    with pytest.MonkeyPatch.context() as env:
        env.delenv("TM_NATS_CA_FILE", raising=False)  # the children get the stack's CA, no other
        stack = Stack(Settings(data_dir=data_dir, nats_port=-1, embedded_tls=True), [], echo=lambda *_: None)
        try:
            loop.run(stack.start())
            yield stack, loop
        finally:
            stack.stop()
            loop.close()


def served_certificate(url: str, ca_file: Path) -> x509.Certificate:
    """The certificate nats-server shows a client that starts with the TLS handshake and trusts
    ``ca_file`` alone (the handshake fails unless it chains to that CA and names 127.0.0.1)."""
    address = urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection((address.hostname, address.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=address.hostname) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def _quiet(_exc: Exception) -> None:
    """nats-py's default error callback prints a traceback per refused try."""


async def test_the_bus_is_served_over_tls_with_the_stacks_own_ca(tls_stack: tuple[Stack, LoopThread]) -> None:
    stack, _ = tls_stack
    tls = LocalTls(stack.auth.tls_dir)
    assert stack.url.startswith("tls://127.0.0.1:")
    assert stack.ca_file == tls.ca_file
    assert all(child.env["TM_NATS_CA_FILE"] == str(tls.ca_file) for child in stack.children)
    served = served_certificate(stack.url, tls.ca_file)
    served.verify_directly_issued_by(x509.load_pem_x509_certificate(tls.ca_file.read_bytes()))
    assert served == x509.load_pem_x509_certificate(tls.server.cert_file.read_bytes())
    # a client that does not start with TLS is refused, creds or not
    plain = stack.url.replace("tls://", "nats://")
    with pytest.raises((NatsError, OSError, TimeoutError)):
        await nats.connect(plain, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0,
                           error_cb=_quiet, **connect_options(stack.auth.admin_creds))
    # one that trusts another CA too
    other = LocalTls(stack.data_dir / "other-ca")
    other.ensure("127.0.0.1")
    with pytest.raises((NatsError, OSError, ssl.SSLError)):
        await nats.connect(stack.url, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0,
                           error_cb=_quiet, **connect_options(stack.auth.admin_creds, other.ca_file))
    # the admin with the CA: job-intake (connected over TLS itself) answers
    async with Client(stack.url, timeout=10, creds=stack.auth.admin_creds, ca_file=stack.ca_file) as client:
        async def listed() -> bool:
            try:
                await client.list(limit=1)
            except (ApiError, NatsError, TimeoutError):
                return False
            return True

        await eventually(listed, 30, 0.2, what="job-intake to answer over TLS")


def test_the_cli_run_from_the_stacks_folder_finds_its_ca(tls_stack: tuple[Stack, LoopThread]) -> None:
    stack, _ = tls_stack
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    # the URL as a user would write it: TLS comes from the CA the stack left for its clients
    env.update(TM_DATA_DIR=str(stack.data_dir), TM_NATS_URL=stack.url.replace("tls://", "nats://"), COLUMNS="200")
    done = subprocess.run([CLI, "job", "list"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_a_due_server_certificate_is_issued_again_and_served_without_a_restart(
        tls_stack: tuple[Stack, LoopThread]) -> None:
    stack, loop = tls_stack
    tls = LocalTls(stack.auth.tls_dir)
    # a certificate issued 340 days ago: within 30 days of its end
    tls._issue_server(x509.load_pem_x509_certificate(tls.ca_file.read_bytes()), "127.0.0.1",
                      dt.datetime.now(dt.UTC) - dt.timedelta(days=340))
    due = x509.load_pem_x509_certificate(tls.server.cert_file.read_bytes())
    nats_pid = stack.nats.proc.pid if stack.nats.proc else None
    stack.tls_checked = 0.0  # the hourly check is due now
    loop.run(stack.renew_tls())
    renewed = x509.load_pem_x509_certificate(tls.server.cert_file.read_bytes())
    assert renewed.serial_number != due.serial_number
    assert renewed.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=360)
    await eventually(lambda: served_certificate(stack.url, tls.ca_file) == renewed, 10, 0.2,
                     what="nats-server to serve the renewed certificate")
    assert stack.nats.proc is not None and stack.nats.proc.pid == nats_pid  # reloaded, not restarted


def test_a_certificate_of_ones_own_is_served_and_its_ca_handed_to_the_clients(tmp_path: Path) -> None:
    own = LocalTls(tmp_path / "own")  # made elsewhere, as a user's would be
    own.ensure("127.0.0.1")
    given = dict(data_dir=tmp_path / "data", nats_port=-1, embedded_tls_cert=own.server.cert_file,
                 embedded_tls_key=own.server.key_file)
    loop = LoopThread()
    with pytest.raises(RuntimeError, match="TM_NATS_CA_FILE"):  # refused before anything starts
        loop.run(Stack(Settings(**given), [], echo=lambda *_: None).start())
    stack = Stack(Settings(**given, nats_ca_file=own.ca_file), [], echo=lambda *_: None)
    try:
        loop.run(stack.start())
        assert stack.url.startswith("tls://127.0.0.1:")
        assert not stack.auth.tls_dir.exists()  # no CA of the stack's own
        assert all(child.env["TM_NATS_CA_FILE"] == str(own.ca_file) for child in stack.children)
        assert served_certificate(stack.url, own.ca_file) == x509.load_pem_x509_certificate(
            own.server.cert_file.read_bytes())
    finally:
        stack.stop()
        loop.close()
