"""Connecting with a creds file, over TLS: the options ``nats.connect`` (and FastStream's broker)
take.

nats-py reads ``user_credentials`` through the ``nkeys`` package; these callbacks do the same
with ``trainmaster.auth.nkeys``.  The file is read at each (re)connect, so a renewed file is used
without a restart, and the seed is never kept in memory between connects.

A cluster's servers carry certificates of its own CA (docs/security.md); a client given that CA
trusts it alone, so a server with a certificate from any other CA, public ones included, is refused.
It also starts each connection with the TLS handshake (the servers' ``handshake_first``): nats-py
otherwise reads the server's greeting in the clear and goes on without TLS when that greeting does
not ask for it, so whoever sits between could relay the signed nonce and pass for this client.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

from trainmaster.auth import jwt
from trainmaster.auth.jwt import parse_creds
from trainmaster.auth.permissions import user_inbox


def tls_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """A client context that verifies servers against ``ca_file`` only; None: nats-py's default
    (the system's CAs, used when a server asks for TLS)."""
    return None if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


def connect_options(creds: Path | None, ca_file: Path | None = None) -> dict[str, Any]:
    """``signature_cb`` and ``user_jwt_cb`` for ``creds``, ``tls`` (TLS first) for ``ca_file``;
    nothing for what is not given."""
    options: dict[str, Any] = {}
    tls = tls_context(ca_file)
    if tls is not None:
        options.update(tls=tls, tls_handshake_first=True)
    if creds is None:
        return options
    path = Path(creds)

    def user_jwt() -> bytes:
        return parse_creds(path.read_text())[0].encode()

    def sign_nonce(nonce: str) -> bytes:
        _, user = parse_creds(path.read_text())
        return base64.b64encode(user.sign(nonce.encode()))

    return {**options, "user_jwt_cb": user_jwt, "signature_cb": sign_nonce}


def person_inbox(creds: Path | None) -> str | None:
    """The inbox prefix a connection with ``creds`` must use: a person's (signed by the people's
    scoped key, so the server lets it subscribe to its own inboxes only) or None for anyone else
    (or a file that cannot be read here: the connect says why)."""
    if creds is None:
        return None
    try:
        claims = jwt.decode(parse_creds(Path(creds).read_text())[0])
    except (OSError, ValueError):
        return None
    nats_claims = claims.get("nats") if isinstance(claims.get("nats"), dict) else {}
    name = claims.get("name")
    if nats_claims.get("issuer_account") and isinstance(name, str) and name:
        return user_inbox(name)
    return None


def inbox_options(creds: Path | None) -> dict[str, Any]:
    """``inbox_prefix`` for ``nats.connect`` when ``creds`` are a person's; nothing otherwise."""
    inbox = person_inbox(creds)
    return {} if inbox is None else {"inbox_prefix": inbox}
