"""Secrets at rest: the keyring and its key file, AES-256-GCM values bound to their record, rotation,
and ``trainmaster secrets new-key``."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from trainmaster import secretbox
from trainmaster.cli.main import app
from trainmaster.secretbox import (
    KeyFileTooOpen,
    Keyring,
    KeyringError,
    UndecryptableValue,
    UnknownKey,
    decrypt,
    encrypt,
    is_encrypted,
    kid_of,
    needs_reencrypt,
)

K1, K2 = b"\x01" * 32, b"\x02" * 32
RING = Keyring((("k2", K2), ("k1", K1)))
OLD = Keyring((("k1", K1),))
text = st.text(max_size=200)
aad = st.binary(max_size=64)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# ------------------------------------------------------------------ values
@given(text, aad)
def test_a_value_decrypts_to_what_was_encrypted(plain: str, data: bytes) -> None:
    value = encrypt(RING, plain, data)
    assert is_encrypted(value) and value.startswith("enc:v1:k2:") and kid_of(value) == "k2"
    assert decrypt(RING, value, data) == plain
    if len(plain) >= 16:  # a short one may turn up in the base64 by chance
        assert plain not in value


@given(text, aad, st.data())
def test_any_changed_byte_is_refused(plain: str, data: bytes, pick: st.DataObject) -> None:
    value = encrypt(RING, plain, data)
    blob = bytearray(base64.b64decode(value.split(":", 3)[3]))
    i = pick.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= pick.draw(st.integers(1, 255))
    tampered = f"enc:v1:k2:{b64(bytes(blob))}"
    with pytest.raises(UndecryptableValue, match="does not decrypt"):
        decrypt(RING, tampered, data)


@given(text, aad, aad)
def test_a_value_moved_to_another_record_is_refused(plain: str, data: bytes, other: bytes) -> None:
    value = encrypt(RING, plain, data)
    if other != data:
        with pytest.raises(UndecryptableValue, match="another record"):
            decrypt(RING, value, other)


@given(text, aad)
def test_after_a_rotation_the_old_key_still_decrypts_and_the_new_one_encrypts(plain: str, data: bytes) -> None:
    old_value = encrypt(OLD, plain, data)
    assert kid_of(old_value) == "k1" and needs_reencrypt(RING, old_value) and not needs_reencrypt(OLD, old_value)
    assert decrypt(RING, old_value, data) == plain
    new_value = encrypt(RING, decrypt(RING, old_value, data), data)
    assert kid_of(new_value) == "k2" and not needs_reencrypt(RING, new_value)
    with pytest.raises(UnknownKey) as exc:
        decrypt(OLD, new_value, data)
    assert exc.value.kid == "k2" and "'k2'" in str(exc.value)


def test_the_same_secret_encrypts_differently_each_time() -> None:
    assert encrypt(RING, "whsec_x", b"a") != encrypt(RING, "whsec_x", b"a")


@pytest.mark.parametrize("value, message", [
    ("whsec_QUJD", "not an encrypted value"),
    ("enc:v2:k2:AAAA", "format this version does not know"),
    ("enc:v1:k2", "without a key id"),
    ("enc:v1:k2:***", "not base64"),
    ("enc:v1:k2:AAAA", "too short"),
])
def test_malformed_values_are_refused_without_being_quoted(value: str, message: str) -> None:
    with pytest.raises(UndecryptableValue, match=message) as exc:
        decrypt(RING, value, b"")
    assert value not in str(exc.value)


def test_a_plain_whsec_secret_is_not_encrypted_and_needs_encrypting() -> None:
    assert not is_encrypted("whsec_QUJD") and kid_of("whsec_QUJD") is None and needs_reencrypt(RING, "whsec_QUJD")


# ------------------------------------------------------------------ key files
def test_a_keyring_never_shows_its_keys() -> None:
    assert repr(RING) == "Keyring(kids=['k2', 'k1'])"
    assert b64(K2) not in f"{RING!r} {RING}"


def test_key_files_parse_with_comments_and_blank_lines() -> None:
    ring = secretbox.parse_keyring(f"# keys\n\nk2:{b64(K2)}\r\n  k1 : {b64(K1)}  \n")
    assert ring.kids == ["k2", "k1"] and ring.primary == "k2" and ring.key("k1") == K1


@pytest.mark.parametrize("content, message", [
    ("", "holds no key"),
    ("# nothing\n", "holds no key"),
    (f"{b64(b'x' * 32)}\n", "line 1: expected '<key id>:<base64 key>'"),
    (f"k1:{b64(b'x' * 32)}\nbad id:{b64(b'x' * 32)}\n", "line 2: expected"),
    ("k1:not base64!\n", "line 1: key 'k1' is not base64"),
    (f"k1:{b64(b'x' * 16)}\n", "line 1: key 'k1' is 16 bytes; a key is 32 random bytes"),
    (f"k1:{b64(b'x' * 32)}\nk1:{b64(b'y' * 32)}\n", "k1 appear more than once"),
])
def test_bad_key_files_are_refused_naming_the_line(content: str, message: str) -> None:
    with pytest.raises(KeyringError, match=message) as exc:
        secretbox.parse_keyring(content)
    assert "eHh4" not in str(exc.value)  # no key material in the message


def test_a_new_key_file_is_private_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "secrets.key"
    assert secretbox.ensure_key_file(path) and not secretbox.ensure_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = secretbox.load_keyring(path)
    assert len(ring.kids) == 1 and ring.primary.startswith("k")
    assert secretbox.load_keyring(path) == ring  # kept as it is


def test_a_missing_or_open_key_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist; make one with `trainmaster secrets new-key"):
        secretbox.load_keyring(tmp_path / "nope.key")
    path = tmp_path / "open.key"
    secretbox.ensure_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileTooOpen, match=r"open to group or others \(mode 0644\): `chmod 600"):
        secretbox.load_keyring(path)
    assert secretbox.load_keyring(path, allow_shared=True).kids


def test_adding_a_key_puts_it_first_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    secretbox.ensure_key_file(path)
    before = secretbox.load_keyring(path)
    value = encrypt(before, "whsec_QUJD", b"t/s")
    after = secretbox.add_key(path, "k-next")
    assert after.kids == ["k-next", *before.kids] and secretbox.load_keyring(path) == after
    assert decrypt(after, value, b"t/s") == "whsec_QUJD"
    with pytest.raises(KeyringError, match="appear more than once"):
        secretbox.add_key(path, "k-next")


# ------------------------------------------------------------------ the command
def test_new_key_command_makes_a_file_refuses_to_overwrite_it_and_rotates(tmp_path: Path) -> None:
    runner = CliRunner()

    def said(result: Result) -> str:  # the console wraps long lines
        return " ".join(result.output.split())

    path = tmp_path / "secrets.key"
    made = runner.invoke(app, ["secrets", "new-key", "--out", str(path), "--kid", "first"])
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and secretbox.load_keyring(path).kids == ["first"]
    again = runner.invoke(app, ["secrets", "new-key", "--out", str(path)])
    assert again.exit_code == 1 and "--add" in said(again) and secretbox.load_keyring(path).kids == ["first"]
    rotated = runner.invoke(app, ["secrets", "new-key", "--out", str(path), "--add", "--kid", "second"])
    assert rotated.exit_code == 0, rotated.output
    assert secretbox.load_keyring(path).kids == ["second", "first"] and "restart the notifiers" in said(rotated)
    missing = runner.invoke(app, ["secrets", "new-key", "--out", str(tmp_path / "none.key"), "--add"])
    assert missing.exit_code == 1 and "does not exist" in said(missing)
