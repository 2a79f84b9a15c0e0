"""Email notifications against a real SMTP server process (aiosmtpd on 127.0.0.1): plain SMTP,
and STARTTLS with a self-signed certificate made at test time plus a login."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from email.policy import default
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from notify_fixtures import api, emit, job_event, job_record, put_job, start_notifier, until

from trainmaster.messages import Status

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[Message, dict]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd calls it by this name
        msg = message_from_bytes(envelope.content, policy=default)
        self.messages.append((msg, {"tls": session.ssl is not None, "authenticated": session.authenticated,
                                    "rcpt": list(envelope.rcpt_tos)}))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "smtp.crt", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"tm", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def plain_smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[tuple[Inbox, int, Path]]:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                            authenticator=authenticator, auth_required=True, auth_require_tls=True)
    controller.start()
    try:
        yield inbox, port, cert
    finally:
        controller.stop()


async def notify_by_email(nc, nats_server: str, services, env: dict[str, str], address: str) -> None:
    await start_notifier(services, nats_server, {"TM_SMTP_HOST": "127.0.0.1", "TM_SMTP_FROM": "tm@example.org",
                                                 **env})
    client = await api(nats_server)
    await client.topics.create("mail")
    sub = await client.topics.subscribe("mail", "email", address)
    assert sub["protocol"] == "email" and "secret" not in sub
    rec = job_record("job-mail", "mail", ["OnJobFailed"], name="iris-mail")
    await put_job(nc, rec)
    await emit(nc, job_event(rec, 4, Status.FAILED, Status.RUNNING, reason="node 0 exited with code 3", exit_code=3))
    await client.__aexit__()


def assert_readable(msg: Message) -> None:
    assert msg["Subject"] == "[trainmaster] iris-mail V001 failed: Failed"
    assert msg["From"] == "tm@example.org" and msg["To"] == "ops@example.org"
    assert msg["Message-ID"].startswith("<msg_")
    text = msg.get_content()
    for part in ("iris-mail", "V001", "Failed (was Running)", "node 0 exited with code 3", "Exit code:  3",
                 "/srv/out/iris-mail", "/srv/logs/iris-mail", "job-mail", "trainmaster job show job-mail"):
        assert part in text, (part, text)


async def test_email_over_plain_smtp(nc, nats_server: str, services, plain_smtp) -> None:
    inbox, port = plain_smtp
    await notify_by_email(nc, nats_server, services, {"TM_SMTP_PORT": str(port)}, "ops@example.org")
    await until(lambda: inbox.messages, what="the email")
    [(msg, session)] = inbox.messages
    assert session["rcpt"] == ["ops@example.org"] and not session["tls"]
    assert_readable(msg)


async def test_email_over_starttls_with_login(nc, nats_server: str, services, tls_smtp) -> None:
    inbox, port, cert = tls_smtp
    env = {"TM_SMTP_PORT": str(port), "TM_SMTP_STARTTLS": "true", "TM_SMTP_CA_FILE": str(cert),
           "TM_SMTP_USERNAME": "tm", "TM_SMTP_PASSWORD": "s3cret"}
    await notify_by_email(nc, nats_server, services, env, "ops@example.org")
    await until(lambda: inbox.messages, what="the email")
    [(msg, session)] = inbox.messages
    assert session["tls"] and session["authenticated"]
    assert_readable(msg)
