"""TLS for the embedded stack (``trainmaster up --tls``): its own small CA and a certificate for the
loopback server, made with ``cryptography`` the way docs/security.md makes a cluster's with openssl.

    <data_dir>/auth/tls/ca.pem            the CA clients trust (TM_NATS_CA_FILE), 10 years
    <data_dir>/auth/tls/ca-key.pem        its key; it signs nothing but this stack's server certificate
    <data_dir>/auth/tls/server.pem        nats-server's certificate (127.0.0.1, localhost, the host), 1 year
    <data_dir>/auth/tls/server-key.pem

Both are made on the first start and kept; the server certificate is issued again when it expires
within ``RENEW_WITHIN`` (checked at each start and while the stack runs: nats-server reloads it),
when it no longer names the configured host, or when the CA changed.  The CA itself is made anew
only when it nears its own end (clients then read the new ``ca.pem`` when they start).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trainmaster.auth.authority import write_private

CA_VALID = dt.timedelta(days=3650)
SERVER_VALID = dt.timedelta(days=365)
RENEW_WITHIN = dt.timedelta(days=30)
# a clock a little behind the one that made a certificate still accepts it
BACKDATE = dt.timedelta(minutes=5)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# ------------------------------------------------------------------------------ pure parts
def server_tls_block(cert_file: Path, key_file: Path) -> str:
    """nats-server's ``tls`` block (as in deploy/nats/single.conf): clients must start with the TLS
    handshake, so none reads a greeting in the clear that could talk it out of TLS."""
    return (
        "tls {\n"
        f'  cert_file: "{cert_file}"\n'
        f'  key_file: "{key_file}"\n'
        "  timeout: 2\n"
        "  handshake_first: true\n"
        "}\n"
    )


def needs_renewal(not_after: dt.datetime, now: dt.datetime, within: dt.timedelta = RENEW_WITHIN) -> bool:
    """A certificate is issued again once it expires within ``within`` (or has)."""
    return not_after - now <= within


def server_names(host: str) -> tuple[tuple[str, ...], tuple[IpAddress, ...]]:
    """The names (DNS, IP) the loopback server's certificate carries: localhost and 127.0.0.1, and
    the configured listen host (a wildcard address names no one, so it adds nothing)."""
    dns: list[str] = ["localhost"]
    ips: list[IpAddress] = [ipaddress.ip_address("127.0.0.1")]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host and host not in dns:
            dns.append(host)
    else:
        if not ip.is_unspecified and ip not in ips:
            ips.append(ip)
    return tuple(dns), tuple(ips)


def reissue_reason(cert: x509.Certificate, ca: x509.Certificate, host: str, now: dt.datetime) -> str | None:
    """Why the server certificate must be issued again (None: it is still good): near its end, not
    naming the host it is served for, or not signed by ``ca``."""
    if needs_renewal(cert.not_valid_after_utc, now):
        return f"it expires {cert.not_valid_after_utc:%Y-%m-%d}"
    dns, ips = server_names(host)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it names no host"
    if not set(dns) <= set(sans.get_values_for_type(x509.DNSName)) or \
            not set(ips) <= set(sans.get_values_for_type(x509.IPAddress)):
        return f"it does not name {host}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "another CA signed it"
    return None


# ------------------------------------------------------------------------------ the files
@dataclass(frozen=True)
class ServerTls:
    """What nats-server serves, and the CA its clients trust (None: the system's)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None

    def config(self) -> str:
        return server_tls_block(self.cert_file, self.key_file)


@dataclass(frozen=True)
class LocalTls:
    """The stack's own CA and server certificate, kept in ``folder`` (0700, keys 0600)."""

    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.folder / "ca-key.pem"

    @property
    def server(self) -> ServerTls:
        return ServerTls(self.folder / "server.pem", self.folder / "server-key.pem", self.ca_file)

    def ensure(self, host: str, now: dt.datetime | None = None, renew_ca: bool = True) -> str | None:
        """Make what is missing or due; returns what was issued and why (None: nothing was).
        ``renew_ca=False`` (a running stack): a CA near its end is left for the next start, as
        the running clients trust the old one until they start again."""
        at = now or dt.datetime.now(dt.UTC)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder.chmod(0o700)
        made: list[str] = []
        ca = _read_cert(self.ca_file)
        if ca is None or not self.ca_key_file.exists() or needs_renewal(ca.not_valid_after_utc, at):
            if not renew_ca:
                return None
            ca = self._make_ca(at)
            made.append("a new CA")
        cert = _read_cert(self.server.cert_file)
        reason = "there was none" if cert is None or not self.server.key_file.exists() else \
            reissue_reason(cert, ca, host, at)
        if reason is not None:
            self._issue_server(ca, host, at)
            made.append(f"a server certificate ({reason})")
        return ", ".join(made) or None

    def _make_ca(self, now: dt.datetime) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trainmaster local CA")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            _builder(name, name, key.public_key(), now, now + CA_VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(self.ca_key_file, _key_pem(key))
        write_private(self.ca_file, cert.public_bytes(serialization.Encoding.PEM).decode())
        return cert

    def _issue_server(self, ca: x509.Certificate, host: str, now: dt.datetime) -> None:
        ca_key = serialization.load_pem_private_key(self.ca_key_file.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        dns, ips = server_names(host)
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(i) for i in ips]
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        cert = (
            _builder(name, ca.subject, key.public_key(), now, min(now + SERVER_VALID, ca.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        # the key first: a server certificate is never on disk without its key
        write_private(self.server.key_file, _key_pem(key))
        write_private(self.server.cert_file, cert.public_bytes(serialization.Encoding.PEM).decode())


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: dt.datetime,
             not_after: dt.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - BACKDATE).not_valid_after(not_after))


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _read_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
