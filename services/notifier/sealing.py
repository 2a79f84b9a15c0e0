"""Webhook signing secrets at rest: encrypted before a subscription is stored, decrypted to sign
(once per subscription, then cached), re-encrypted under the key file's first key at start.

The keys come from ``TM_SECRETS_KEY_FILE`` (``trainmaster.secretbox``).  A running notifier reads
that file again when it meets a key it does not hold, so a rotation rolled out host by host does
not stop the notifiers still running from signing what a restarted one re-encrypted.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import structlog

from services.notifier.store import TopicStore
from services.notifier.topics import ApiProblem, Resealed, plain_secret, reseal_topic, seal_subscription
from trainmaster import kvstore
from trainmaster.messages import TopicRecord, TopicSubscription
from trainmaster.secretbox import NEW_KEY_HINT, KeyFileTooOpen, Keyring, KeyringError, UnknownKey, load_keyring
from trainmaster.settings import NotifierSettings

log = structlog.get_logger()


def keyring_of(config: NotifierSettings) -> Keyring:
    """The keyring ``TM_SECRETS_KEY_FILE`` names; KeyringError says what is wrong and how to fix it."""
    path = config.secrets_key_file
    if path is None:
        raise KeyringError(
            "TM_SECRETS_KEY_FILE is not set: the notifier keeps webhook signing secrets encrypted with the "
            f"keys in that file; {NEW_KEY_HINT.replace('FILE', '/etc/trainmaster/secrets.key')} and set "
            "TM_SECRETS_KEY_FILE to it (`trainmaster up` makes <data_dir>/auth/secrets.key by itself)")
    try:
        return load_keyring(path, config.secrets_key_file_allow_shared)
    except KeyFileTooOpen as exc:
        raise KeyFileTooOpen(f"{exc}, or accept it with TM_SECRETS_KEY_FILE_ALLOW_SHARED=true") from None


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class SubscriptionSecrets:
    def __init__(self, keyring: Keyring, path: Path | None = None, allow_shared: bool = False) -> None:
        self.keyring = keyring
        self.path = path
        self.allow_shared = allow_shared
        self.loaded = _signature(path) if path is not None else None
        self._decrypt = lru_cache(maxsize=4096)(self._decrypt_uncached)

    @classmethod
    def from_settings(cls, config: NotifierSettings) -> SubscriptionSecrets:
        return cls(keyring_of(config), config.secrets_key_file, config.secrets_key_file_allow_shared)

    def seal(self, topic: str, sub: TopicSubscription) -> TopicSubscription:
        """``sub`` as it is stored: its secret encrypted."""
        return seal_subscription(self.keyring, topic, sub)

    def reveal(self, topic: str, sub: TopicSubscription) -> str:
        """The plain secret to sign with.  Raises SecretBoxError (its message names no secret)."""
        try:
            return self._decrypt(topic, sub)
        except UnknownKey:
            if not self._reload():
                raise
            return self._decrypt(topic, sub)

    def _decrypt_uncached(self, topic: str, sub: TopicSubscription) -> str:
        # keyed by the whole (frozen) subscription, so a changed secret is decrypted anew
        return plain_secret(self.keyring, topic, sub)

    def _reload(self) -> bool:
        """Read the key file again if it changed since; True when that gave a new keyring."""
        if self.path is None:
            return False
        signature = _signature(self.path)
        if signature is None or signature == self.loaded:
            return False
        self.loaded = signature
        try:
            self.keyring = load_keyring(self.path, self.allow_shared)
        except KeyringError as exc:
            log.warning("the key file changed but cannot be used; keeping the keys read before", error=str(exc))
            return False
        log.info("key file read again", key_file=str(self.path), keys=self.keyring.kids)
        return True

    async def reseal_stored(self, topics: TopicStore) -> None:
        """Re-encrypt, under the first key, every stored secret in plain text or under an older
        key (each topic one compare-and-set; concurrent replicas and API writes are safe)."""
        changed, kids = 0, set()
        for listed in await topics.all():
            outcome = reseal_topic(self.keyring, listed)
            if outcome.changed:
                try:
                    outcome = await self._reseal(topics, listed.name) or outcome
                except ApiProblem:  # deleted meanwhile
                    continue
                except kvstore.ChangeConflict as exc:
                    log.warning("secrets of a topic not re-encrypted; the next start tries again", topic=listed.name,
                                error=str(exc))
            changed += outcome.changed
            kids |= outcome.kids
            for sub_id, why in outcome.failures.items():
                log.error("a webhook signing secret does not decrypt: its deliveries fail until its key is back "
                          "in the key file", topic=listed.name, subscription=sub_id, error=why)
        log.info("webhook signing secrets encrypted under the key file's first key", key=self.keyring.primary,
                 reencrypted=changed, keys_in_use=sorted(kids))

    async def _reseal(self, topics: TopicStore, name: str) -> Resealed | None:
        last: list[Resealed] = []

        def decide(record: TopicRecord) -> TopicRecord | None:
            outcome = reseal_topic(self.keyring, record)
            last[:] = [outcome]
            return outcome.record if outcome.changed else None

        await topics.change(name, decide)
        return last[0] if last else None
