"""Secrets at rest: AES-256-GCM under a keyring of named keys.

A key file holds one key a line, ``<kid>:<base64 of 32 random bytes>`` (blank lines and ``#``
comments allowed).  The first key encrypts; every key decrypts.  A rotation therefore adds a new
first line and keeps the old ones until nothing is encrypted under them any more.

An encrypted value reads ``enc:v1:<kid>:<base64(nonce || ciphertext and tag)>``.  The caller's
associated data (the identity of the record the value belongs to) is authenticated with it, so a
value copied into another record does not decrypt there.

Errors never quote key material or the values they are about: they end up in logs.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trainmaster.auth.authority import write_private

PREFIX = "enc:"  # what every encrypted value starts with, whatever its version
PREFIX_V1 = "enc:v1:"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce: random per value (2^32 values per key stay far from a collision)
TAG_BYTES = 16
KID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
NEW_KEY_HINT = "make one with `trainmaster secrets new-key --out FILE`"


class SecretBoxError(ValueError):
    """A key file or an encrypted value that cannot be used; the message says why and what to do."""


class KeyringError(SecretBoxError):
    """The key file is missing, malformed, or readable by others."""


class KeyFileTooOpen(KeyringError):
    """The key file may be read or written by group or others."""


class UnknownKey(SecretBoxError):
    """The value was encrypted under a key the keyring does not hold."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"encrypted under key {kid!r}, which the key file does not hold: put that key back "
                         "into the file (a rotation keeps the old keys until nothing uses them)")
        self.kid = kid


class UndecryptableValue(SecretBoxError):
    """Not an encrypted value, or one that does not decrypt: damaged, tampered with, or moved to
    another record (its associated data differs)."""


@dataclass(frozen=True)
class Keyring:
    """Named AES-256 keys; the first encrypts.  The keys never appear in a repr."""

    keys: tuple[tuple[str, bytes], ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringError(f"a keyring needs at least one key; {NEW_KEY_HINT}")
        kids = [kid for kid, _ in self.keys]
        for kid, key in self.keys:
            if not KID_RE.match(kid):
                raise KeyringError(f"key id {kid!r}: use 1-64 letters, digits, '.', '_' or '-'")
            if len(key) != KEY_BYTES:
                raise KeyringError(f"key {kid!r} is {len(key)} bytes; a key is {KEY_BYTES} random bytes (AES-256)")
        dupes = sorted({kid for kid in kids if kids.count(kid) > 1})
        if dupes:
            raise KeyringError(f"key id(s) {', '.join(dupes)} appear more than once")

    @property
    def primary(self) -> str:
        """The key that encrypts."""
        return self.keys[0][0]

    @property
    def kids(self) -> list[str]:
        return [kid for kid, _ in self.keys]

    def key(self, kid: str) -> bytes:
        for name, key in self.keys:
            if name == kid:
                return key
        raise UnknownKey(kid)

    def __repr__(self) -> str:
        return f"Keyring(kids={self.kids})"


# ------------------------------------------------------------------ key files
def new_kid(now: float | None = None) -> str:
    """A key id that sorts by its day of making and does not collide: ``k20260101-3fa9c2``."""
    return time.strftime("k%Y%m%d", time.gmtime(now)) + "-" + secrets.token_hex(3)


def new_key(kid: str | None = None) -> tuple[str, bytes]:
    return kid or new_kid(), secrets.token_bytes(KEY_BYTES)


def parse_keyring(text: str, source: str = "key file") -> Keyring:
    """The keyring a key file's text holds; errors name the line (never its key)."""
    keys: list[tuple[str, bytes]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kid, sep, encoded = line.partition(":")
        kid = kid.strip()
        if not sep or not KID_RE.match(kid):
            raise KeyringError(f"{source}, line {number}: expected '<key id>:<base64 key>' with a key id of "
                               "1-64 letters, digits, '.', '_' or '-'")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError(f"{source}, line {number}: key {kid!r} is not base64") from None
        if len(key) != KEY_BYTES:
            raise KeyringError(f"{source}, line {number}: key {kid!r} is {len(key)} bytes; a key is {KEY_BYTES} "
                               f"random bytes (AES-256); {NEW_KEY_HINT}")
        keys.append((kid, key))
    if not keys:
        raise KeyringError(f"{source} holds no key; {NEW_KEY_HINT}")
    return Keyring(tuple(keys))


def format_keyring(keyring: Keyring) -> str:
    header = ("# trainmaster secrets keys: '<key id>:<base64 key>', one a line; the first encrypts, all decrypt.\n"
              "# Keep a backup: without these keys the stored webhook signing secrets cannot be read.\n")
    return header + "".join(f"{kid}:{base64.b64encode(key).decode()}\n" for kid, key in keyring.keys)


def check_private(path: Path) -> None:
    """Refuse a key file that group or others may read or write (mode and owner are the file's
    own, after symlinks)."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise KeyFileTooOpen(f"key file {path} is open to group or others (mode {stat.S_IMODE(mode):04o}): "
                           f"`chmod 600 {path}`")


def load_keyring(path: Path, allow_shared: bool = False) -> Keyring:
    """The keyring in ``path``; unless ``allow_shared``, only from a file its owner alone may read."""
    try:
        if not allow_shared:
            check_private(path)
        text = path.read_text()
    except FileNotFoundError:
        raise KeyringError(f"key file {path} does not exist; {NEW_KEY_HINT}") from None
    except IsADirectoryError:
        raise KeyringError(f"key file {path} is a directory; {NEW_KEY_HINT}") from None
    except PermissionError:
        raise KeyringError(f"key file {path} cannot be read by this process (user id {os.getuid()})") from None
    except UnicodeDecodeError:
        raise KeyringError(f"key file {path} is not text: expected '<key id>:<base64 key>' lines") from None
    return parse_keyring(text, f"key file {path}")


def write_keyring(path: Path, keyring: Keyring) -> None:
    """Write (atomically) a key file only its owner can read."""
    write_private(path, format_keyring(keyring))


def ensure_key_file(path: Path) -> bool:
    """Make a key file with one new key unless ``path`` exists (kept as it is); True if made."""
    if path.exists():
        return False
    write_keyring(path, Keyring((new_key(),)))
    return True


def add_key(path: Path, kid: str | None = None, allow_shared: bool = False) -> Keyring:
    """Put a new key first in the key file at ``path`` (a rotation), keeping every other key."""
    current = load_keyring(path, allow_shared)
    added = Keyring((new_key(kid), *current.keys))
    write_keyring(path, added)
    return added


# ------------------------------------------------------------------ values
def is_encrypted(value: str) -> bool:
    return value.startswith(PREFIX)


def kid_of(value: str) -> str | None:
    """The key id an encrypted value names (None: not a v1 encrypted value)."""
    if not value.startswith(PREFIX_V1):
        return None
    kid, sep, _ = value[len(PREFIX_V1):].partition(":")
    return kid if sep and kid else None


def needs_reencrypt(keyring: Keyring, value: str) -> bool:
    """Plain text, or encrypted under a key other than the one that encrypts now."""
    return kid_of(value) != keyring.primary


def encrypt(keyring: Keyring, plaintext: str, associated_data: bytes) -> str:
    kid = keyring.primary
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(keyring.key(kid)).encrypt(nonce, plaintext.encode(), associated_data)
    return f"{PREFIX_V1}{kid}:{base64.b64encode(nonce + sealed).decode()}"


def decrypt(keyring: Keyring, value: str, associated_data: bytes) -> str:
    """The plain text of ``value``: UnknownKey names a key the keyring lacks, UndecryptableValue
    anything else that stops it (never the value itself)."""
    if not value.startswith(PREFIX_V1):
        if is_encrypted(value):
            raise UndecryptableValue("encrypted in a format this version does not know (expected 'enc:v1:')")
        raise UndecryptableValue("not an encrypted value (expected 'enc:v1:<key id>:<base64>')")
    kid = kid_of(value)
    if kid is None:
        raise UndecryptableValue("an encrypted value without a key id")
    key = keyring.key(kid)
    try:
        blob = base64.b64decode(value[len(PREFIX_V1) + len(kid) + 1:], validate=True)
    except (binascii.Error, ValueError):
        raise UndecryptableValue(f"an encrypted value under key {kid!r} that is not base64") from None
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise UndecryptableValue(f"an encrypted value under key {kid!r} that is too short")
    try:
        plain = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise UndecryptableValue(f"an encrypted value under key {kid!r} does not decrypt: damaged, changed, or "
                                 "belonging to another record") from None
    try:
        return plain.decode()
    except UnicodeDecodeError:
        raise UndecryptableValue(f"an encrypted value under key {kid!r} holds no text") from None
