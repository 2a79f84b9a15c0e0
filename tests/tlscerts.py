"""Throwaway TLS certificates made the way docs/security.md makes them with ``openssl``: a small CA
and one certificate per server with its names (SANs), for serving and for routing (server and
client use).  A test that needs them is skipped where ``openssl`` is not installed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class ServerCert:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", *EC_KEY, "-days", "3650", "-subj", "/CN=trainmaster CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=folder)
    return folder / "ca.pem"


def make_server_cert(folder: Path, name: str, dns: tuple[str, ...], ips: tuple[str, ...] = ()) -> ServerCert:
    """A certificate of the CA in ``folder`` for ``name``, valid for ``dns`` and ``ips``."""
    sans = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
    (folder / f"{name}.ext").write_text(
        f"subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("req", *EC_KEY, "-subj", f"/CN={dns[0] if dns else name}", "-keyout", f"{name}-key.pem",
             "-out", f"{name}.csr", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
             "-days", "825", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)
    return ServerCert(folder / f"{name}.pem", folder / f"{name}-key.pem")
