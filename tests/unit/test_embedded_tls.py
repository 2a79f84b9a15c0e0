"""TLS of the embedded stack: nats-server's tls block, when a certificate is issued again, the
files the stack makes, and the setting that turns it on."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import ValidationError

from trainmaster.auth.local import LocalAuth, local_ca_file
from trainmaster.auth.localtls import (
    RENEW_WITHIN,
    LocalTls,
    ServerTls,
    needs_renewal,
    reissue_reason,
    server_names,
    server_tls_block,
)
from trainmaster.settings import Settings
from trainmaster.topology import Topology

NOW = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)


def cert_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_server_block_asks_for_the_tls_handshake_first() -> None:
    block = server_tls_block(Path("/d/auth/tls/server.pem"), Path("/d/auth/tls/server-key.pem"))
    assert block.startswith("tls {\n") and block.endswith("}\n")
    assert '  cert_file: "/d/auth/tls/server.pem"\n' in block
    assert '  key_file: "/d/auth/tls/server-key.pem"\n' in block
    assert "  handshake_first: true\n" in block
    # the server does not ask clients for certificates of their own: they prove themselves with creds
    assert "verify" not in block and "ca_file" not in block


def test_a_certificate_is_renewed_within_30_days_of_its_end() -> None:
    assert RENEW_WITHIN == dt.timedelta(days=30)
    assert not needs_renewal(NOW + dt.timedelta(days=31), NOW)
    assert needs_renewal(NOW + dt.timedelta(days=30), NOW)
    assert needs_renewal(NOW + dt.timedelta(days=1), NOW)
    assert needs_renewal(NOW - dt.timedelta(days=1), NOW)  # expired


def test_the_server_certificate_names_loopback_and_the_configured_host() -> None:
    loopback = ipaddress.ip_address("127.0.0.1")
    assert server_names("127.0.0.1") == (("localhost",), (loopback,))
    assert server_names("localhost") == (("localhost",), (loopback,))
    assert server_names("tm.lan") == (("localhost", "tm.lan"), (loopback,))
    assert server_names("10.0.0.7") == (("localhost",), (loopback, ipaddress.ip_address("10.0.0.7")))
    assert server_names("0.0.0.0") == (("localhost",), (loopback,))  # a wildcard names no one


def test_the_stack_makes_a_private_ca_and_a_server_certificate_it_signed(tmp_path: Path) -> None:
    tls = LocalTls(tmp_path / "auth" / "tls")
    made = tls.ensure("127.0.0.1", now=NOW)
    assert made is not None and "a new CA" in made and "there was none" in made
    assert stat.S_IMODE(tls.folder.stat().st_mode) == 0o700
    for path in tls.folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    ca, cert = cert_of(tls.ca_file), cert_of(tls.server.cert_file)
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc - NOW == dt.timedelta(days=3650)
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=365)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert reissue_reason(cert, ca, "127.0.0.1", NOW) is None
    assert tls.ensure("127.0.0.1", now=NOW + dt.timedelta(days=300)) is None  # kept while good


def test_a_due_or_misnamed_server_certificate_is_issued_again_under_the_same_ca(tmp_path: Path) -> None:
    tls = LocalTls(tmp_path / "tls")
    tls.ensure("127.0.0.1", now=NOW)
    ca, first = cert_of(tls.ca_file), cert_of(tls.server.cert_file)
    later = NOW + dt.timedelta(days=340)
    assert reissue_reason(first, ca, "127.0.0.1", later) == f"it expires {first.not_valid_after_utc:%Y-%m-%d}"
    made = tls.ensure("127.0.0.1", now=later)
    assert made is not None and made.startswith("a server certificate (it expires")
    assert cert_of(tls.ca_file) == ca
    second = cert_of(tls.server.cert_file)
    assert second.serial_number != first.serial_number and second.not_valid_after_utc - later == dt.timedelta(days=365)
    assert reissue_reason(second, ca, "tm.lan", later) == "it does not name tm.lan"
    tls.ensure("tm.lan", now=later)
    assert "tm.lan" in cert_of(tls.server.cert_file).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_a_ca_near_its_end_is_made_anew_at_a_start_only(tmp_path: Path) -> None:
    tls = LocalTls(tmp_path / "tls")
    tls.ensure("127.0.0.1", now=NOW)
    old_ca = cert_of(tls.ca_file)
    near_end = old_ca.not_valid_after_utc - dt.timedelta(days=10)
    assert tls.ensure("127.0.0.1", now=near_end, renew_ca=False) is None  # a running stack leaves it
    server_end = cert_of(tls.server.cert_file).not_valid_after_utc
    assert tls.ensure("127.0.0.1", now=near_end) == f"a new CA, a server certificate (it expires {server_end:%Y-%m-%d})"
    new_ca = cert_of(tls.ca_file)
    assert new_ca != old_ca
    assert reissue_reason(cert_of(tls.server.cert_file), new_ca, "127.0.0.1", near_end) is None
    assert reissue_reason(cert_of(tls.server.cert_file), old_ca, "127.0.0.1", near_end) == "another CA signed it"


def test_the_server_config_has_the_tls_block_and_the_cli_finds_the_ca_only_while_tls_is_on(tmp_path: Path) -> None:
    local = LocalAuth(tmp_path / "data")
    tls = LocalTls(local.tls_dir)
    tls.ensure("127.0.0.1")
    local.prepare(Topology(), ["scheduler"], [], tls.server)
    assert local.server_config_file.read_text().endswith(tls.server.config())
    assert local_ca_file(local.data_dir) == tls.ca_file.resolve()
    local.prepare(Topology(), ["scheduler"], [])  # started again without TLS
    assert "tls {" not in local.server_config_file.read_text()
    assert local_ca_file(local.data_dir) is None
    own = ServerTls(tmp_path / "own.pem", tmp_path / "own-key.pem", tls.ca_file)
    local.prepare(Topology(), ["scheduler"], [], own)
    assert f'cert_file: "{own.cert_file}"' in local.server_config_file.read_text()
    assert local_ca_file(local.data_dir) == tls.ca_file.resolve()


def test_tls_is_off_by_default_and_a_certificate_of_ones_own_comes_with_its_key(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Settings().embedded.tls
    monkeypatch.setenv("TM_EMBEDDED_TLS", "1")
    assert Settings().embedded.tls
    monkeypatch.delenv("TM_EMBEDDED_TLS")
    monkeypatch.setenv("TM_EMBEDDED_TLS_CERT", str(tmp_path / "own.pem"))
    with pytest.raises(ValidationError, match="TM_EMBEDDED_TLS_KEY"):
        Settings()
    monkeypatch.setenv("TM_EMBEDDED_TLS_KEY", str(tmp_path / "own-key.pem"))
    embedded = Settings().embedded
    assert embedded.tls and not embedded.embedded_tls and embedded.embedded_tls_key == tmp_path / "own-key.pem"
