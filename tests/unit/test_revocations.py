"""Which user keys the people's account JWT revokes, and the JWT that carries them."""

from __future__ import annotations

from trainmaster.access import Credential, UserRecord
from trainmaster.auth import jwt
from trainmaster.auth.authority import Authority
from trainmaster.auth.revocations import people_account_jwt, revoked_keys
from trainmaster.topology import Topology


def test_revoked_credentials_and_every_key_of_a_disabled_user_are_revoked() -> None:
    alice = UserRecord("alice", 1.0, credentials=[
        Credential("c1", "nats", 1.0, public_key="UA1"),
        Credential("c2", "nats", 1.0, public_key="UA2", revoked_at=100.2),
        Credential("t1", "token", 1.0, token_hash="h", revoked_at=50.0),  # a token is no NATS key
    ])
    gone = UserRecord("gone", 1.0, disabled_at=200.0, credentials=[
        Credential("c3", "nats", 1.0, public_key="UG1"),
        Credential("c4", "nats", 1.0, public_key="UG2", revoked_at=150.0),
    ])
    # a JWT issued at or before the time is refused: the time is rounded up, never down
    assert revoked_keys([alice, gone]) == {"UA2": 101, "UG1": 200, "UG2": 150}
    assert revoked_keys([]) == {}


def test_the_people_account_jwt_carries_the_revocations_and_keeps_its_imports(tmp_path) -> None:
    authority = Authority.load_or_create(tmp_path / "keys")
    claims = jwt.decode(people_account_jwt(authority, Topology(), {"UA2": 101}, issued_at=1000))
    assert claims["sub"] == authority.users.public_key and claims["iss"] == authority.operator.public_key
    assert claims["iat"] == 1000 and claims["nats"]["revocations"] == {"UA2": 101}
    assert claims["nats"]["imports"] and claims["nats"]["signing_keys"][0]["key"] == authority.users_signing.public_key
