"""nkeys and NATS JWTs as the reference libraries write them: keys, seeds and signatures match
the vectors of github.com/nats-io/nkeys (checked against the ``nkeys`` package); a JWT verifies
only with its issuer's signature; a creds file reads back."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainmaster.auth import jwt, permissions
from trainmaster.auth.authority import Authority
from trainmaster.auth.credentials import connect_options
from trainmaster.auth.nkeys import InvalidKey, KeyKind, KeyPair, kind_of, verify
from trainmaster.topology import Topology

# (kind, raw private key, seed, public key) made by the ``nkeys`` package
VECTORS = [
    (KeyKind.OPERATOR, bytes(range(1, 33)), "SOAACAQDAQCQMBYIBEFAWDANBYHRAEISCMKBKFQXDAMRUGY4DUPB6IHCVI",
     "OB43KVROR7TFJ6KAPCYRF2FJROTZAH4FHLTJLPWX4DRZCC5NASLGIT25"),
    (KeyKind.ACCOUNT, bytes([7] * 32), "SAAAOBYHA4DQOBYHA4DQOBYHA4DQOBYHA4DQOBYHA4DQOBYHA4DQOB6O4U",
     "ADVEU3DD4KOFECV66VIHWEZOYX4ZKR3WV27L464SIIPOU2IUI3JCZW22"),
    (KeyKind.USER, bytes(range(32, 64)), "SUACAIJCEMSCKJRHFAUSUKZMFUXC6MBRGIZTINJWG44DSOR3HQ6T4PY7UE",
     "UAU2ZOXBIG6MV4FSFYNJJU2NBPDTMHSSNUF74EWIS6KLZEZCSZW5PMRM"),
]


@pytest.mark.parametrize(("kind", "raw", "seed", "public"), VECTORS)
def test_keys_are_written_as_the_reference_writes_them(kind: KeyKind, raw: bytes, seed: str, public: str) -> None:
    pair = KeyPair(kind, raw)
    assert (pair.seed, pair.public_key) == (seed, public)
    assert KeyPair.from_seed(seed) == pair
    assert kind_of(public) == kind


def test_a_signature_matches_the_reference() -> None:
    pair = KeyPair.from_seed("SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU")
    assert pair.public_key == "UCK5N7N66OBOINFXAYC2ACJQYFSOD4VYNU6APEJTAVFZB2SVHLKGEW7L"
    assert pair.sign(b"hello").hex().startswith("9d7eb7c1df0be292f7c02a48888bf583")
    assert verify(pair.public_key, b"hello", pair.sign(b"hello"))
    assert not verify(pair.public_key, b"hellO", pair.sign(b"hello"))


def test_a_damaged_key_is_refused() -> None:
    seed = VECTORS[2][2]
    damaged = seed[:10] + ("A" if seed[10] != "A" else "B") + seed[11:]
    with pytest.raises(InvalidKey, match="checksum"):
        KeyPair.from_seed(damaged)
    with pytest.raises(InvalidKey, match="not an nkey seed"):
        KeyPair.from_seed(VECTORS[2][3])  # a public key is no seed


@given(st.sampled_from(list(KeyKind)))
def test_generated_keys_read_back(kind: KeyKind) -> None:
    pair = KeyPair.generate(kind)
    assert KeyPair.from_seed(pair.seed) == pair
    assert kind_of(pair.public_key) == kind


def test_a_jwt_verifies_with_its_issuer_only() -> None:
    account = KeyPair.generate(KeyKind.ACCOUNT)
    user = KeyPair.generate(KeyKind.USER)
    token = jwt.encode(jwt.user_claims(user.public_key, "alice", permissions.service(), now=1000), account)
    claims = jwt.decode(token)
    assert (claims["iss"], claims["sub"], claims["name"]) == (account.public_key, user.public_key, "alice")
    assert claims["nats"]["type"] == "user" and claims["nats"]["pub"] == {"allow": [">"]}
    header, body, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"typ": "JWT", "alg": "ed25519-nkey"}
    forged = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged["name"] = "root"
    forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidToken, match="signature"):
        jwt.decode(f"{header}.{forged_body}.{signature}")


def test_identical_grants_share_an_id_and_others_do_not() -> None:
    account = KeyPair.generate(KeyKind.ACCOUNT)
    user = KeyPair.generate(KeyKind.USER)
    claims = jwt.user_claims(user.public_key, "a", permissions.service(), now=1000)
    first, again = jwt.decode(jwt.encode(claims, account)), jwt.decode(jwt.encode(claims, account))
    later = jwt.decode(jwt.encode(jwt.user_claims(user.public_key, "a", permissions.service(), now=1001), account))
    assert first["jti"] == again["jti"] != later["jti"]


def test_nothing_allowed_is_written_as_a_deny() -> None:
    nothing = jwt.Permissions().claims()
    assert nothing["pub"] == {"deny": [">"]} and nothing["sub"] == {"deny": [">"]}


def test_creds_file_round_trip_and_connect_options(tmp_path: Path) -> None:
    authority = Authority.load_or_create(tmp_path / "auth")
    text = authority.issue("agent-1", "TM", permissions.agent(Topology(), "agent-1"))
    token, user = jwt.parse_creds(text)
    claims = jwt.decode(token)
    assert claims["iss"] == authority.services.public_key and claims["sub"] == user.public_key
    path = tmp_path / "agent.creds"
    path.write_text(text)
    options = connect_options(path)
    assert options["user_jwt_cb"]() == token.encode()
    signature = base64.b64decode(options["signature_cb"]("nonce-123"))
    assert verify(user.public_key, b"nonce-123", signature)
    assert connect_options(None) == {}
    with pytest.raises(jwt.InvalidToken, match="not a creds file"):
        jwt.parse_creds("nothing here")


def test_the_authority_keeps_its_keys_private_and_stable(tmp_path: Path) -> None:
    first = Authority.load_or_create(tmp_path / "auth")
    again = Authority.load_or_create(tmp_path / "auth")
    assert first == again
    for path in (tmp_path / "auth").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "auth").stat().st_mode) == 0o700
    accounts = {jwt.decode(t)["name"]: jwt.decode(t) for t in first.account_jwts(Topology(), now=5).values()}
    assert set(accounts) == {"SYS", "TM", "USERS"}
    assert all(a["iss"] == first.operator.public_key for a in accounts.values())
    assert "disk_storage" in accounts["TM"]["nats"]["limits"]  # JetStream for the services' account only
    assert "disk_storage" not in accounts["USERS"]["nats"]["limits"]
    operator = jwt.decode(first.operator_jwt(now=5))
    assert operator["nats"]["system_account"] == first.system.public_key


def test_an_agent_may_touch_only_its_own_subjects() -> None:
    topo = Topology()
    allowed = permissions.agent(topo, "gpu-7")
    assert topo.agent_status("gpu-7") in allowed.publish and topo.agent_heartbeat("gpu-7") in allowed.publish
    assert not any("gpu-8" in s for s in allowed.publish)
    assert topo.agent_control() not in allowed.publish and not any(s.startswith(topo.agent_control("")) for s in
                                                                  allowed.publish)
    assert allowed.subscribe == ("_INBOX.agents.gpu-7.>",) == (f"{permissions.agent_inbox('gpu-7')}.>",)
    assert not any(s in (">", "$JS.API.>") for s in allowed.publish)


def test_an_agent_may_use_the_jetstream_api_only_for_its_own_consumer_and_reads() -> None:
    topo = Topology()
    allowed = permissions.agent(topo, "gpu-7")
    api = [s for s in allowed.publish if s.startswith("$JS.API.")]
    assert not any("*" in s or ">" in s for s in api), api  # no wildcard over the JetStream API
    # its consumer only with its own filter (the filter is part of the subject); never the create
    # subjects that carry no filter, never another stream's or consumer's
    create = "$JS.API.CONSUMER.CREATE.TM_AGENT.agent-gpu-7.tm.agent.control.gpu-7"
    assert [s for s in api if ".CREATE." in s] == [create]
    assert not any(verb in s for s in api for verb in (".DELETE.", ".PURGE.", ".UPDATE.", ".NAMES", ".LIST"))
    assert not any(topo.bucket_jobs.name in s for s in allowed.publish)
    assert "$JS.ACK.TM_AGENT.agent-gpu-7.>" in allowed.publish
    assert not any(s.startswith("$JS.ACK.") and "gpu-7" not in s for s in allowed.publish)


def test_the_embedded_stack_keeps_every_identity_private(tmp_path: Path) -> None:
    from trainmaster.auth.local import LocalAuth, local_admin_creds

    local = LocalAuth(tmp_path / "data")
    assert local_admin_creds(local.data_dir) is None
    authority = local.prepare(Topology(), ["job_intake", "scheduler"], ["local-1"])
    assert local_admin_creds(local.data_dir) == local.admin_creds
    assert f"system_account: {authority.system.public_key}" in local.server_config_file.read_text()
    for path in [local.root, *local.root.rglob("*")]:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    agent = jwt.decode(jwt.parse_creds(local.creds_of("agent-local-1").read_text())[0])
    assert agent["iss"] == authority.services.public_key
    assert agent["nats"]["pub"]["allow"] == list(permissions.agent(Topology(), "local-1").publish)
    again = local.prepare(Topology(), ["job_intake"], [])
    assert again == authority  # the keys are kept across starts
    # job-intake's users signer: the people's scoped key, which it signs people's JWTs with
    from trainmaster.auth.users_signer import load_signer

    signer = load_signer(local.users_signer_file)
    assert (signer.key, signer.account) == (authority.users_signing, authority.users.public_key)
