"""The users every service answering public verbs knows: a watch on ``tm_users`` kept in memory,
so resolving a request's caller is a dictionary lookup and a revocation takes effect as soon as
its write is seen (milliseconds), on every replica.

``Directory.caller(headers)`` is the one way a service learns who asked (``trainmaster.access``
decides what that caller may do)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from collections.abc import Mapping

import msgspec
import structlog
from nats.js.kv import KeyValue

from trainmaster import access
from trainmaster.access import Caller, Credential, UserRecord
from trainmaster.user_rules import TOKEN_PREFIX

log = structlog.get_logger()
_decode_user = msgspec.json.Decoder(UserRecord).decode


def token_hash(token: str) -> str:
    """What ``tm_users`` keeps of an API token (it has 256 random bits: a plain hash is enough)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """(token, its hash): ``tmu_`` and 32 random URL-safe characters (192 bits)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    return token, token_hash(token)


def credential_id() -> str:
    return f"cred-{uuid.uuid4().hex[:12]}"


class Directory:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.users: dict[str, UserRecord] = {}
        self._by_key: dict[str, tuple[UserRecord, Credential]] = {}
        self._by_token: dict[str, tuple[UserRecord, Credential]] = {}
        self._watcher = None
        self.changed = asyncio.Event()  # set at each change seen; whoever waits on it clears it

    async def start(self) -> Directory:
        """Load every user (the watch ends its initial values with ``None``)."""
        self._watcher = await self.kv.watchall(include_history=False)
        async for entry in self._watcher:
            if entry is None:
                break
            self._apply(entry)
        self._reindex()
        return self

    async def follow(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is not None:
                self._apply(entry)
                self._reindex()
                self.changed.set()

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            self.users.pop(entry.key, None)
            return
        try:
            self.users[entry.key] = _decode_user(entry.value)
        except msgspec.DecodeError:
            log.error("unreadable user record: ignored (its credentials are refused)", user=entry.key)
            self.users.pop(entry.key, None)

    def _reindex(self) -> None:
        self._by_key = access.keys_of(self.users.values())
        self._by_token = access.tokens_of(self.users.values())

    def put(self, user: UserRecord) -> None:
        """Read-your-writes for this replica: a user just written is known before its watch update."""
        self.users[user.name] = user
        self._reindex()

    def caller(self, headers: Mapping[str, str] | None) -> Caller:
        """Who sent a request with these headers; ``access.Denied`` for revoked or unknown keys.

        A request from inside the services' account (no ``Nats-Request-Info``) that carries
        ``Tm-Token`` is the token's user's (unknown or revoked: ``Denied``): whoever may send it is
        the cluster admin anyway, so the header only narrows.  On a request from the people's
        account the header is ignored: a person is always the user of the key that connected."""
        headers = headers or {}
        raw = headers.get(access.REQUEST_INFO)
        if raw is None and (token := headers.get(access.ON_BEHALF)) is not None:
            return self.caller_of_token(token)
        return access.caller_of(access.request_info(raw), self._by_key)

    def caller_of_token(self, token: str) -> Caller:
        """Who holds an API token (for the HTTP API); ``access.Denied`` when nobody does."""
        found = self._by_token.get(token_hash(token))
        if found is None:
            raise access.Denied("unauthorized", "this token belongs to no user (revoked, or never issued here)")
        user, credential = found
        if user.disabled_at is not None or not credential.active:
            raise access.Denied("unauthorized", f"this token of user {user.name!r} was revoked")
        return access.user_caller(user, credential.id)

