"""Pure core: Standard Webhooks signatures and secrets.

``webhook-signature: v1,<base64 HMAC-SHA256(key, "<webhook-id>.<timestamp>.<body>")>`` where the
key is the base64-decoded part of a ``whsec_...`` secret.  The official ``standardwebhooks``
package verifies exactly this (tests/unit/test_notify_signing.py checks it for arbitrary bodies).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from functools import lru_cache

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24  # the specification asks for 24 to 64 random bytes
MAX_KEY_BYTES = 64


class InvalidSecret(ValueError):
    pass


def generate_secret(random_bytes: int = 24) -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(random_bytes)).decode()


@lru_cache(maxsize=4096)
def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (cached: it is decoded once per subscription, not per send)."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret("a webhook secret starts with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("a webhook secret is 'whsec_' followed by base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise InvalidSecret(f"a webhook secret holds {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, this one {len(key)}")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    to_sign = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    digest = hmac.new(secret_key(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one attempt: the id stays the same across retries, the timestamp and the
    signature are those of the attempt (receivers reject timestamps older than a few minutes)."""
    return {
        "content-type": "application/cloudevents+json; charset=utf-8",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
