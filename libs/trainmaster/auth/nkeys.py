"""NATS nkeys: Ed25519 keys written as base32 with a type prefix and a CRC-16 checksum.

The encoding of github.com/nats-io/nkeys (and the ``nkeys`` package nats-py uses for
``user_credentials``), written over ``cryptography`` so that no source-only package is needed:
an operator key starts with ``O``, an account key with ``A``, a user key with ``U``; a seed
(the private half) with ``S`` and the type letter (``SU...``).
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

_SEED_PREFIX = 18 << 3  # "S"


class KeyKind(enum.IntEnum):
    """The prefix byte of a public key of each kind."""

    OPERATOR = 14 << 3  # "O"
    ACCOUNT = 0  # "A"
    USER = 20 << 3  # "U"


class InvalidKey(ValueError):
    pass


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum nkeys append."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw + _crc16(raw).to_bytes(2, "little")).decode().rstrip("=")


def _decode(text: str) -> bytes:
    try:
        data = base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError as exc:
        raise InvalidKey(f"not an nkey: {exc}") from None
    raw, crc = data[:-2], int.from_bytes(data[-2:], "little")
    if len(data) < 3 or _crc16(raw) != crc:
        raise InvalidKey("not an nkey: bad checksum")
    return raw


@dataclass(frozen=True)
class KeyPair:
    kind: KeyKind
    private: bytes  # the 32-byte Ed25519 seed

    @classmethod
    def generate(cls, kind: KeyKind) -> KeyPair:
        key = Ed25519PrivateKey.generate()
        return cls(kind, key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        raw = _decode(seed.strip())
        if len(raw) != 34 or raw[0] & 0xF8 != _SEED_PREFIX:
            raise InvalidKey("not an nkey seed")
        kind_byte = ((raw[0] & 0x07) << 5) | (raw[1] >> 3)
        try:
            kind = KeyKind(kind_byte)
        except ValueError:
            raise InvalidKey(f"an nkey seed of an unsupported kind ({kind_byte})") from None
        return cls(kind, raw[2:])

    @property
    def seed(self) -> str:
        return _encode(bytes([_SEED_PREFIX | (self.kind >> 5), (self.kind & 31) << 3]) + self.private)

    @property
    def public_key(self) -> str:
        public = Ed25519PrivateKey.from_private_bytes(self.private).public_key()
        return _encode(bytes([self.kind]) + public.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, data: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.private).sign(data)


def kind_of(public_key: str) -> KeyKind:
    raw = _decode(public_key)
    try:
        return KeyKind(raw[0])
    except ValueError:
        raise InvalidKey(f"{public_key[:1]}...: not an operator, account or user key") from None


def verify(public_key: str, data: bytes, signature: bytes) -> bool:
    raw = _decode(public_key)
    if len(raw) != 33:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(raw[1:]).verify(signature, data)
    except InvalidSignature:
        return False
    return True
