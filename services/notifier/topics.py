"""Pure core of the topics API: checks and changes of a topic record (no I/O, time passed in).

A topic record holds its subscriptions, so every change to a topic is one compare-and-set of one
KV key (the shell in ``api.py`` reads, calls one of these, writes at the read revision).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

import msgspec

from services.notifier.signing import InvalidSecret, generate_secret, secret_key
from trainmaster.messages import (
    SubscribeRequest,
    SubscriptionView,
    TopicRecord,
    TopicSubscription,
    TopicView,
)
from trainmaster.secretbox import (
    Keyring,
    SecretBoxError,
    UndecryptableValue,
    decrypt,
    encrypt,
    is_encrypted,
    kid_of,
    needs_reencrypt,
)

MAX_SUBSCRIPTIONS = 1000  # one topic record stays well under the 1 MiB message limit
EMAIL_RE = re.compile(r"^[^@\s<>(),;:\"\[\]]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class ApiProblem(Exception):
    """An error reply: ``code`` (not_found, conflict, invalid_request, forbidden_address), the
    field it is about and a message a person can act on."""

    def __init__(self, code: str, message: str, field: str | None = None, detail_code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.detail_code = detail_code or code


def new_subscription_id() -> str:
    return f"sub_{secrets.token_hex(8)}"


def check_email(address: str) -> str:
    address = address.strip()
    if not EMAIL_RE.match(address):
        raise ApiProblem("invalid_request", f"{address!r} is not an email address (name@domain)", "endpoint",
                         "invalid_email")
    return address


def check_secret(secret: str) -> str:
    try:
        secret_key(secret)
    except InvalidSecret as exc:
        raise ApiProblem("invalid_request", f"{exc} (omit it to have one generated)", "secret",
                         "invalid_secret") from None
    return secret


def subscription_of(req: SubscribeRequest, endpoint: str, sub_id: str, now: float) -> TopicSubscription:
    """The stored subscription for a checked request (``endpoint``: the checked URL or address)."""
    if req.protocol == "email":
        if req.secret is not None:
            raise ApiProblem("invalid_request", "an email subscription takes no secret", "secret", "unexpected")
        return TopicSubscription(id=sub_id, protocol="email", endpoint=endpoint, created_at=now)
    secret = check_secret(req.secret) if req.secret is not None else generate_secret()
    return TopicSubscription(id=sub_id, protocol="webhook", endpoint=endpoint, created_at=now, secret=secret)


def secret_aad(topic: str, sub_id: str) -> bytes:
    """What a subscription's encrypted secret is bound to: copied into another subscription (or
    topic) it does not decrypt."""
    return f"tm_topics\x00{topic}\x00{sub_id}".encode()


def plain_secret(keyring: Keyring, topic: str, sub: TopicSubscription) -> str:
    """The ``whsec_`` secret of a webhook subscription as stored: decrypted, or as it is when it was
    stored in plain text (before secrets were encrypted; re-encrypted at the next start)."""
    if sub.secret is None:
        raise UndecryptableValue(f"subscription {sub.id} has no signing secret")
    if not is_encrypted(sub.secret):
        return sub.secret
    return decrypt(keyring, sub.secret, secret_aad(topic, sub.id))


def seal_subscription(keyring: Keyring, topic: str, sub: TopicSubscription) -> TopicSubscription:
    """``sub`` with its secret encrypted under the keyring's first key (unchanged when it is
    already, or has no secret).  Raises SecretBoxError when its secret does not decrypt."""
    if sub.secret is None or not needs_reencrypt(keyring, sub.secret):
        return sub
    plain = plain_secret(keyring, topic, sub)
    return msgspec.structs.replace(sub, secret=encrypt(keyring, plain, secret_aad(topic, sub.id)))


@dataclass(frozen=True)
class Resealed:
    """A topic record after re-encrypting its secrets: how many changed, which could not be
    (subscription id -> why: a key the keyring lacks, a damaged value), and the keys it then uses."""

    record: TopicRecord
    changed: int
    failures: dict[str, str]

    @property
    def kids(self) -> set[str]:
        return {kid for s in self.record.subscriptions if s.secret and (kid := kid_of(s.secret))}


def reseal_topic(keyring: Keyring, topic: TopicRecord) -> Resealed:
    """Every secret of ``topic`` that is plain text or under an older key, encrypted under the
    first key; one that does not decrypt is left as it is (and named)."""
    subs, changed, failures = [], 0, {}
    for sub in topic.subscriptions:
        try:
            sealed = seal_subscription(keyring, topic.name, sub)
        except SecretBoxError as exc:
            failures[sub.id] = str(exc)
            sealed = sub
        changed += sealed is not sub
        subs.append(sealed)
    record = msgspec.structs.replace(topic, subscriptions=subs) if changed else topic
    return Resealed(record, changed, failures)


def add_subscription(topic: TopicRecord, sub: TopicSubscription) -> TopicRecord:
    if len(topic.subscriptions) >= MAX_SUBSCRIPTIONS:
        raise ApiProblem("conflict", f"topic {topic.name} has {MAX_SUBSCRIPTIONS} subscriptions, the most allowed")
    return msgspec.structs.replace(topic, subscriptions=[*topic.subscriptions, sub])


def remove_subscription(topic: TopicRecord, sub_id: str) -> TopicRecord:
    kept = [s for s in topic.subscriptions if s.id != sub_id]
    if len(kept) == len(topic.subscriptions):
        raise ApiProblem("not_found", f"topic {topic.name} has no subscription {sub_id}", "subscription_id")
    return msgspec.structs.replace(topic, subscriptions=kept)


def disable_subscription(topic: TopicRecord, sub_id: str, reason: str, now: float) -> TopicRecord | None:
    """The record with ``sub_id`` disabled; None when there is nothing to change (gone or disabled)."""
    changed = False
    subs = []
    for s in topic.subscriptions:
        if s.id == sub_id and s.state == "active":
            s = msgspec.structs.replace(s, state="disabled", disabled_at=now, disabled_reason=reason)
            changed = True
        subs.append(s)
    return msgspec.structs.replace(topic, subscriptions=subs) if changed else None


def check_delete(topic: TopicRecord, force: bool) -> None:
    """A topic with subscriptions is deleted only with ``force`` (which removes them too)."""
    if topic.subscriptions and not force:
        raise ApiProblem("conflict", f"topic {topic.name} has {len(topic.subscriptions)} subscription(s): "
                         "unsubscribe them first, or delete with force to remove them too")


def view(topic: str, sub: TopicSubscription, with_secret: bool = False) -> SubscriptionView:
    return SubscriptionView(id=sub.id, topic=topic, protocol=sub.protocol, endpoint=sub.endpoint, state=sub.state,
                            created_at=sub.created_at, disabled_at=sub.disabled_at,
                            disabled_reason=sub.disabled_reason, secret=sub.secret if with_secret else None)


def topic_view(topic: TopicRecord) -> TopicView:
    return TopicView(name=topic.name, description=topic.description, created_at=topic.created_at,
                     subscriptions=len(topic.subscriptions),
                     active_subscriptions=sum(1 for s in topic.subscriptions if s.state == "active"),
                     project=topic.project)
