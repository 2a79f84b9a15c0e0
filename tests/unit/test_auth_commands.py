"""``trainmaster auth`` without a server: the authority is made once and loaded after, the include
file trusts it, each kind of creds gets its account and permissions and is written 0600, and every
mistake (no authority, a bad id, an existing file, a path that cannot be written) is told plainly
with nothing written.  The client side: a CA file becomes the TLS context of every connection."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path

import pytest
from faststream.nats import NatsJWT, NatsSecurity
from tlscerts import make_ca
from typer.testing import CliRunner

from trainmaster.auth import jwt, permissions
from trainmaster.auth.authority import Authority
from trainmaster.auth.credentials import connect_options
from trainmaster.auth.users_signer import load_signer
from trainmaster.bus import broker_security
from trainmaster.cli.auth import Grant, IdentityKind, grant
from trainmaster.cli.main import app
from trainmaster.settings import Settings, get_settings
from trainmaster.topology import Topology


def cli(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["auth", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the terminal's width


@pytest.fixture
def authority_dir(tmp_path: Path) -> Path:
    code, _, err = cli("init", "--dir", tmp_path / "authority")
    assert code == 0, err
    return tmp_path / "authority"


def issued(out: Path) -> dict:
    token, _ = jwt.parse_creds(out.read_text())
    return jwt.decode(token)


# ----------------------------------------------------------------------------------- init
def test_init_makes_the_keys_once_and_loads_them_after(tmp_path: Path) -> None:
    folder = tmp_path / "authority"
    code, out, _ = cli("init", "--dir", folder, "--json")
    first = json.loads(out)
    assert code == 0 and first["created"] == ["operator", "SYS", "TM", "USERS", "USERS-scoped"]
    authority = Authority.load_or_create(folder)
    assert first["public_keys"] == {"operator": authority.operator.public_key, "SYS": authority.system.public_key,
                                    "TM": authority.services.public_key, "USERS": authority.users.public_key,
                                    "USERS-scoped": authority.users_signing.public_key}
    code, out, _ = cli("init", "--dir", folder, "--json")
    assert code == 0 and json.loads(out) == {**first, "created": []}
    code, out, _ = cli("init", "--dir", folder)
    assert code == 0 and "authority loaded" in out and authority.services.public_key in out
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_init_where_a_file_is_fails_plainly(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    code, _, err = cli("init", "--dir", tmp_path / "taken")
    assert code == 1 and "cannot make or read the authority" in one_line(err)


def test_init_warns_about_a_folder_others_may_enter(tmp_path: Path) -> None:
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open").chmod(0o755)
    code, _, err = cli("init", "--dir", tmp_path / "open")
    assert code == 0 and "chmod 700" in one_line(err)


# ----------------------------------------------------------------------------------- server config
def test_the_include_file_trusts_the_authority_and_is_the_same_for_every_server(authority_dir: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "etc" / "nats-auth.conf"
    code, _, err = cli("server-config", "--dir", authority_dir, "--out", out, "--resolver-dir", "/srv/accounts")
    assert code == 0, err
    text = out.read_text()
    authority = Authority.load_or_create(authority_dir)
    operator_jwt = text.split('operator: "', 1)[1].split('"', 1)[0]
    assert jwt.decode(operator_jwt)["sub"] == authority.operator.public_key  # inline: nothing else to copy
    assert f"system_account: {authority.system.public_key}" in text
    assert 'dir: "/srv/accounts"' in text
    for key in (authority.system, authority.services, authority.users):
        assert f"    {key.public_key}: " in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not (tmp_path / "srv").exists() and sorted(p.name for p in authority_dir.iterdir()) == [
        "operator.nk", "services.nk", "system.nk", "users-signing.nk", "users.nk"]


def test_no_authority_no_config_and_none_is_made(tmp_path: Path) -> None:
    code, _, err = cli("server-config", "--dir", tmp_path / "nowhere", "--out", tmp_path / "auth.conf")
    assert code == 2 and "trainmaster auth init" in one_line(err)
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "auth.conf").exists()


def test_an_incomplete_authority_is_refused(authority_dir: Path, tmp_path: Path) -> None:
    (authority_dir / "services.nk").unlink()
    code, _, err = cli("issue", "service", "scheduler", "--dir", authority_dir, "--out", tmp_path / "s.creds")
    assert code == 2 and "services.nk missing" in one_line(err)
    assert not (authority_dir / "services.nk").exists() and not (tmp_path / "s.creds").exists()


# ----------------------------------------------------------------------------------- issue
@pytest.mark.parametrize(("kind", "name"), [("service", "scheduler"), ("agent", "gpu-host-07"), ("admin", "ops")])
def test_issued_creds_carry_their_kind_s_account_and_permissions(authority_dir: Path, tmp_path: Path, kind: str,
                                                                 name: str) -> None:
    out = tmp_path / "creds" / f"{name}.creds"
    code, stdout, err = cli("issue", kind, name, "--dir", authority_dir, "--out", out, "--json")
    assert code == 0, err
    reply = json.loads(stdout)
    claims = issued(out)
    authority = Authority.load_or_create(authority_dir)
    assert reply == {"name": name, "kind": kind, "account": "TM", "public_key": claims["sub"], "creds": str(out)}
    assert claims["iss"] == authority.services.public_key and claims["name"] == name
    expected = grant(IdentityKind(kind), name, Topology()).permissions.claims()
    assert {k: claims["nats"].get(k) for k in expected} == expected
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not list(out.parent.glob("*.tmp"))


def test_an_agent_s_subjects_follow_the_cluster_s_prefix(authority_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_SUBJECT_PREFIX", "lab")
    get_settings.cache_clear()
    try:
        code, _, err = cli("issue", "agent", "gpu-1", "--dir", authority_dir, "--out", tmp_path / "a.creds")
    finally:
        get_settings.cache_clear()
    assert code == 0, err
    assert issued(tmp_path / "a.creds")["nats"]["pub"]["allow"] == list(
        permissions.agent(Topology(prefix="lab"), "gpu-1").publish)


def test_grants() -> None:
    topo = Topology()
    assert grant(IdentityKind.SERVICE, "job-intake", topo) == Grant("TM", permissions.service())
    assert grant(IdentityKind.ADMIN, "ops", topo) == Grant("TM", permissions.cluster_admin())
    assert grant(IdentityKind.AGENT, "gpu_7", topo) == Grant("TM", permissions.agent(topo, "gpu_7"))
    for kind, bad in [(IdentityKind.AGENT, "gpu.7"), (IdentityKind.AGENT, "gpu*"), (IdentityKind.AGENT, ""),
                      (IdentityKind.AGENT, "a" * 129), (IdentityKind.SERVICE, "a b"), (IdentityKind.ADMIN, "x>")]:
        with pytest.raises(ValueError, match=r"no (agent id|service name|admin name)"):
            grant(kind, bad, topo)


@pytest.mark.parametrize("agent_id", ["gpu.7", "gpu 7", "gpu>", "gpu-1\n", "gpu[red]", "a" * 129])
def test_a_bad_agent_id_is_refused_before_anything_is_written(authority_dir: Path, tmp_path: Path,
                                                              agent_id: str) -> None:
    code, _, err = cli("issue", "agent", agent_id, "--dir", authority_dir, "--out", tmp_path / "a.creds")
    assert code == 2 and "is no agent id" in one_line(err)
    assert not (tmp_path / "a.creds").exists()


def test_an_existing_creds_file_is_replaced_only_with_force(authority_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scheduler.creds"
    assert cli("issue", "service", "scheduler", "--dir", authority_dir, "--out", out)[0] == 0
    before = out.read_text()
    code, _, err = cli("issue", "service", "scheduler", "--dir", authority_dir, "--out", out)
    assert code == 2 and "--force" in one_line(err) and out.read_text() == before
    code, _, err = cli("issue", "service", "scheduler", "--dir", authority_dir, "--out", out, "--force")
    assert code == 0, err
    assert out.read_text() != before and issued(out)["name"] == "scheduler"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_path_that_cannot_be_written_is_told(authority_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("x")
    code, _, err = cli("issue", "admin", "ops", "--dir", authority_dir, "--out", tmp_path / "plain-file" / "ops.creds")
    assert code == 1 and "plain-file is a file, not a folder" in one_line(err)
    code, _, err = cli("issue", "admin", "ops", "--dir", authority_dir, "--out", tmp_path)
    assert code == 2 and "is a folder" in one_line(err)
    code, _, err = cli("server-config", "--dir", authority_dir, "--out", tmp_path / "plain-file" / "auth.conf")
    assert code == 1 and "cannot write" in one_line(err)


# ----------------------------------------------------------------------------------- client side
def test_a_ca_file_is_the_only_trust_of_every_connection(authority_dir: Path, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "tls")
    context = connect_options(None, ca)["tls"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname and [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "trainmaster CA"),),)]
    assert connect_options(None) == {}
    creds = tmp_path / "s.creds"
    assert cli("issue", "service", "s", "--dir", authority_dir, "--out", creds)[0] == 0
    options = connect_options(creds, ca)
    assert set(options) == {"tls", "tls_handshake_first", "user_jwt_cb", "signature_cb"}
    assert options["tls_handshake_first"] is True  # never a greeting in the clear (credentials.py)

    with_both = broker_security(Settings(nats_creds=creds, nats_ca_file=ca))
    assert isinstance(with_both, NatsJWT) and with_both.ssl_context is not None and with_both.tls_handshake_first
    assert with_both.jwt_cb() == jwt.parse_creds(creds.read_text())[0].encode()
    only_ca = broker_security(Settings(nats_ca_file=ca))
    assert type(only_ca) is NatsSecurity and only_ca.ssl_context is not None and only_ca.tls_handshake_first
    only_creds = broker_security(Settings(nats_creds=creds))
    assert isinstance(only_creds, NatsJWT) and only_creds.ssl_context is None and not only_creds.tls_handshake_first
    assert broker_security(Settings()) is None


def test_the_ca_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_NATS_CA_FILE", "/etc/trainmaster/tls/ca.pem")
    assert Settings().bus.nats_ca_file == Path("/etc/trainmaster/tls/ca.pem")
    monkeypatch.delenv("TM_NATS_CA_FILE")
    assert Settings().bus.nats_ca_file is None


def test_the_users_signer_is_written_once_for_job_intake(authority_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "users-signer.key"
    code, stdout, err = cli("issue", "users-signer", "--dir", authority_dir, "--out", out, "--json")
    assert code == 0, err
    authority = Authority.load_or_create(authority_dir)
    assert json.loads(stdout)["account"] == authority.users.public_key
    signer = load_signer(out)
    assert signer.key.public_key == authority.users_signing.public_key  # the scoped key, not the account's own
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    code, _, err = cli("issue", "users-signer", "--dir", authority_dir, "--out", out)
    assert code == 2 and "--force" in one_line(err)
