"""The notifier's webhook signing secrets at rest: encrypted in the stored subscription, bound to
it, re-encrypted under the first key (plain-text records of older versions too), decrypted to
sign, and the key file's setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier import topics as core
from services.notifier.sealing import SubscriptionSecrets, keyring_of
from services.notifier.signing import generate_secret
from trainmaster import secretbox
from trainmaster.messages import TopicRecord, TopicSubscription
from trainmaster.secretbox import KeyFileTooOpen, Keyring, KeyringError, UndecryptableValue, UnknownKey, kid_of
from trainmaster.settings import Settings

OLD = Keyring((("old", b"\x01" * 32),))
NEW = Keyring((("new", b"\x02" * 32), ("old", b"\x01" * 32)))


def hook(sub_id: str, secret: str | None = None) -> TopicSubscription:
    return TopicSubscription(id=sub_id, protocol="webhook", endpoint="https://x.example.com/", created_at=1,
                             secret=secret or generate_secret())


def mail(sub_id: str) -> TopicSubscription:
    return TopicSubscription(id=sub_id, protocol="email", endpoint="a@b.example", created_at=1)


@given(st.integers(24, 64))
def test_a_stored_secret_is_encrypted_and_decrypts_only_in_its_own_subscription(size: int) -> None:
    plain = generate_secret(size)
    sealed = core.seal_subscription(NEW, "team", hook("sub_1", plain))
    assert sealed.secret is not None and plain not in sealed.secret and kid_of(sealed.secret) == "new"
    assert core.plain_secret(NEW, "team", sealed) == plain
    moved = TopicSubscription(id="sub_2", protocol="webhook", endpoint=sealed.endpoint, created_at=1,
                              secret=sealed.secret)
    with pytest.raises(UndecryptableValue):
        core.plain_secret(NEW, "team", moved)
    with pytest.raises(UndecryptableValue):
        core.plain_secret(NEW, "other-team", sealed)


def test_sealing_leaves_what_needs_nothing_alone() -> None:
    sealed = core.seal_subscription(NEW, "team", hook("sub_1"))
    assert core.seal_subscription(NEW, "team", sealed) is sealed
    email = mail("sub_2")
    assert core.seal_subscription(NEW, "team", email) is email


def test_a_topic_is_resealed_under_the_first_key_plain_text_included() -> None:
    plain = [generate_secret() for _ in range(3)]
    under_old = core.seal_subscription(OLD, "team", hook("sub_old", plain[1]))
    current = core.seal_subscription(NEW, "team", hook("sub_new", plain[2]))
    topic = TopicRecord(name="team", created_at=1,
                        subscriptions=[hook("sub_plain", plain[0]), under_old, current, mail("sub_mail")])
    out = core.reseal_topic(NEW, topic)
    assert out.changed == 2 and not out.failures and out.kids == {"new"}
    subs = out.record.subscriptions
    assert [core.plain_secret(NEW, "team", s) for s in subs[:3]] == plain
    assert subs[2] is current and subs[3] == mail("sub_mail")
    again = core.reseal_topic(NEW, out.record)
    assert again.changed == 0 and again.record is out.record


def test_a_secret_under_a_missing_key_is_left_as_it_is_and_named() -> None:
    under_new = core.seal_subscription(NEW, "team", hook("sub_1"))
    topic = TopicRecord(name="team", created_at=1, subscriptions=[under_new, hook("sub_2")])
    out = core.reseal_topic(OLD, topic)
    assert out.changed == 1 and list(out.failures) == ["sub_1"] and "'new'" in out.failures["sub_1"]
    assert out.record.subscriptions[0] is under_new and out.kids == {"new", "old"}


def test_no_view_but_the_subscribe_reply_shows_a_secret() -> None:
    plain = hook("sub_1")
    stored = core.seal_subscription(NEW, "team", plain)
    assert core.view("team", stored).secret is None and core.view("team", plain).secret is None
    assert core.view("team", plain, with_secret=True).secret == plain.secret


# ------------------------------------------------------------------ the shell's keys
def key_file(path: Path, keyring: Keyring) -> Path:
    secretbox.write_keyring(path, keyring)
    return path


def test_signing_decrypts_once_and_reads_a_rotated_key_file(tmp_path: Path) -> None:
    path = key_file(tmp_path / "secrets.key", OLD)
    secrets = SubscriptionSecrets.from_settings(Settings(secrets_key_file=path).notifier)
    plain = hook("sub_1")
    stored = secrets.seal("team", plain)
    assert kid_of(stored.secret or "") == "old"
    assert secrets.reveal("team", stored) == plain.secret == secrets.reveal("team", stored)
    assert secrets._decrypt.cache_info().hits == 1
    assert secrets.reveal("team", hook("sub_2", "whsec_" + "QUJD" * 8)) == "whsec_" + "QUJD" * 8  # older record
    # another notifier restarted with a rotated file and re-encrypted this one under the new key
    rotated = core.seal_subscription(NEW, "team", plain)
    key_file(path, NEW)
    assert secrets.reveal("team", rotated) == plain.secret and secrets.keyring.primary == "new"
    with pytest.raises(UnknownKey):  # a key nobody has: the file, unchanged, is not read again
        secrets.reveal("team", core.seal_subscription(Keyring((("gone", b"\x03" * 32),)), "team", plain))


def test_the_key_file_setting_is_required_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_SECRETS_KEY_FILE", "")
    with pytest.raises(KeyringError, match=r"TM_SECRETS_KEY_FILE is not set.*trainmaster secrets new-key --out"):
        keyring_of(Settings().notifier)
    path = key_file(tmp_path / "secrets.key", OLD)
    os.chmod(path, 0o640)
    monkeypatch.setenv("TM_SECRETS_KEY_FILE", str(path))
    with pytest.raises(KeyFileTooOpen, match=r"chmod 600.*TM_SECRETS_KEY_FILE_ALLOW_SHARED=true"):
        keyring_of(Settings().notifier)
    monkeypatch.setenv("TM_SECRETS_KEY_FILE_ALLOW_SHARED", "true")
    assert keyring_of(Settings().notifier).kids == ["old"]
