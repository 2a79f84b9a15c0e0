"""NATS JWTs (v2): operator, account and user claims, signed with the issuer's nkey.

The format of github.com/nats-io/jwt: ``base64url(header).base64url(claims).base64url(signature)``
with header ``{"typ": "JWT", "alg": "ed25519-nkey"}``; the claims carry ``iss`` (the signer's
public key), ``sub`` (the key the claims are about), ``iat``, an optional ``exp``, a ``jti``
(a hash of the claims) and the type's own fields under ``nats``.  A creds file holds a user's JWT
and its seed, the way ``nats.connect(user_credentials=...)`` and the ``nats`` CLI read it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from trainmaster.auth.nkeys import KeyKind, KeyPair, kind_of, verify

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
UNLIMITED = -1


class InvalidToken(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode(claims: dict[str, Any], signer: KeyPair) -> str:
    """Sign ``claims`` (``iss`` is set to the signer); ``jti`` is the hash of the rest, as the Go
    library makes it, so two identical grants have one id."""
    body = {**claims, "iss": signer.public_key, "jti": ""}
    body["jti"] = base64.b32encode(hashlib.new("sha512_256", _compact(body)).digest()).decode().rstrip("=")
    signing_input = f"{_b64(_compact(_HEADER))}.{_b64(_compact(body))}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def decode(token: str) -> dict[str, Any]:
    """The claims of a JWT whose signature is its issuer's; anything else raises InvalidToken."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise InvalidToken("not a JWT: it has no three dot-separated parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except ValueError as exc:
        raise InvalidToken(f"not a JWT: {exc}") from None
    if header.get("alg") != _HEADER["alg"]:
        raise InvalidToken(f"a JWT signed with {header.get('alg')!r}, not an nkey")
    issuer = claims.get("iss", "")
    if not verify(issuer, f"{parts[0]}.{parts[1]}".encode(), signature):
        raise InvalidToken("the JWT's signature is not its issuer's")
    return claims


@dataclass(frozen=True)
class Permissions:
    """What a user may publish and subscribe to (NATS subjects, wildcards allowed); an empty list
    allows nothing.  ``allow_responses``: it may answer the requests it receives (a service)."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    allow_responses: bool = False

    def claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pub": {"allow": list(self.publish)} if self.publish else {"deny": [">"]},
                               "sub": {"allow": list(self.subscribe)} if self.subscribe else {"deny": [">"]}}
        if self.allow_responses:
            out["resp"] = {"max": 1, "ttl": 0}  # a service answers each request once
        return out


@dataclass(frozen=True)
class Export:
    """A subject an account offers others: a service (request/reply) or a stream (messages)."""

    subject: str
    kind: str = "service"  # "service" | "stream"
    streamed_replies: bool = False  # a service answering one request with several messages

    def claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.subject, "subject": self.subject, "type": self.kind}
        if self.kind == "service" and self.streamed_replies:
            out["response_type"] = "Stream"
        return out


@dataclass(frozen=True)
class Import:
    """A subject taken from another account; ``share``: the exporter learns who is asking (the
    server adds ``Nats-Request-Info`` to each request)."""

    subject: str
    account: str  # the exporting account's public key
    kind: str = "service"
    share: bool = True

    def claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.subject, "subject": self.subject, "account": self.account,
                               "type": self.kind}
        if self.kind == "service" and self.share:
            out["share"] = True
        return out


def operator_claims(operator: KeyPair, name: str, system_account: str, now: int) -> dict[str, Any]:
    return {"iat": now, "name": name, "sub": operator.public_key,
            "nats": {"type": "operator", "version": 2, "system_account": system_account}}


@dataclass(frozen=True)
class ScopedKey:
    """An account signing key whose users get ``template``'s permissions, set by nats-server, not
    by the JWT: whoever holds the key can mint users of this account with these rights and no
    others.  The template may name the user (``{{name()}}``)."""

    key: str  # the signing key's public key (an account key)
    role: str
    template: Permissions

    def claims(self) -> dict[str, Any]:
        return {"kind": "user_scope", "key": self.key, "role": self.role,
                "template": {**self.template.claims(), "subs": UNLIMITED, "data": UNLIMITED,
                             "payload": UNLIMITED}}


@dataclass(frozen=True)
class AccountSpec:
    name: str
    jetstream: bool = False
    exports: tuple[Export, ...] = ()
    imports: tuple[Import, ...] = ()
    revocations: dict[str, int] = field(default_factory=dict)  # user key -> revoked for JWTs issued before
    signing_keys: tuple[ScopedKey, ...] = ()


def account_claims(account: KeyPair, spec: AccountSpec, now: int) -> dict[str, Any]:
    limits: dict[str, Any] = {"subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED, "imports": UNLIMITED,
                              "exports": UNLIMITED, "wildcards": True, "conn": UNLIMITED, "leaf": UNLIMITED}
    if spec.jetstream:
        limits.update({"mem_storage": UNLIMITED, "disk_storage": UNLIMITED, "streams": UNLIMITED,
                       "consumer": UNLIMITED})
    nats: dict[str, Any] = {"type": "account", "version": 2, "limits": limits}
    if spec.exports:
        nats["exports"] = [e.claims() for e in spec.exports]
    if spec.imports:
        nats["imports"] = [i.claims() for i in spec.imports]
    if spec.revocations:
        nats["revocations"] = dict(spec.revocations)
    if spec.signing_keys:
        nats["signing_keys"] = [k.claims() for k in spec.signing_keys]
    return {"iat": now, "name": spec.name, "sub": account.public_key, "nats": nats}


def user_claims(user_key: str, name: str, permissions: Permissions | None, now: int,
                expires: int | None = None, issuer_account: str | None = None) -> dict[str, Any]:
    """A user's claims.  ``permissions`` None with ``issuer_account``: a user signed by a scoped
    signing key of that account (the key's template gives its rights; the JWT must carry none)."""
    if kind_of(user_key) != KeyKind.USER:
        raise ValueError(f"{user_key[:8]}...: not a user key")
    nats: dict[str, Any] = {"type": "user", "version": 2}
    if permissions is not None:
        nats.update({"subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED, **permissions.claims()})
    if issuer_account is not None:
        nats["issuer_account"] = issuer_account
    claims: dict[str, Any] = {"iat": now, "name": name, "sub": user_key, "nats": nats}
    if expires is not None:
        claims["exp"] = expires
    return claims


_CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""
_BLOCK = re.compile(r"-{3,}BEGIN [A-Z ]+-{3,}\s*\n\s*([^\s-][^\n]*?)\s*\n\s*-{3,}END [A-Z ]+-{3,}")


def creds_text(user_jwt: str, user: KeyPair) -> str:
    return _CREDS.format(jwt=user_jwt, seed=user.seed)


def parse_creds(text: str) -> tuple[str, KeyPair]:
    """(user JWT, user key pair) of a creds file."""
    blocks = _BLOCK.findall(text)
    if len(blocks) < 2:
        raise InvalidToken("not a creds file: it needs a JWT block and a seed block")
    return blocks[0], KeyPair.from_seed(blocks[1])
