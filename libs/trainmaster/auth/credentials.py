"""Connecting with a creds file: the options ``nats.connect`` (and FastStream's broker) take.

nats-py reads ``user_credentials`` through the ``nkeys`` package; these callbacks do the same
with ``trainmaster.auth.nkeys``.  The file is read at each (re)connect, so a renewed file is used
without a restart, and the seed is never kept in memory between connects.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from trainmaster.auth.jwt import parse_creds


def connect_options(creds: Path | None) -> dict[str, Any]:
    """``signature_cb`` and ``user_jwt_cb`` for ``creds``; nothing when there is none."""
    if creds is None:
        return {}
    path = Path(creds)

    def user_jwt() -> bytes:
        return parse_creds(path.read_text())[0].encode()

    def sign_nonce(nonce: str) -> bytes:
        _, user = parse_creds(path.read_text())
        return base64.b64encode(user.sign(nonce.encode()))

    return {"user_jwt_cb": user_jwt, "signature_cb": sign_nonce}
