"""job-intake's ``tm.users.*``: people, their roles in projects and their credentials, kept in
``tm_users``.  The decisions are ``trainmaster.user_rules``'; these handlers resolve the caller,
decide, write with a compare-and-set and tell this replica's directory at once (the others learn
it from their watch within milliseconds: a revocation is refused everywhere within a second).

A NATS credential is a JWT job-intake signs with the people's scoped key (the users signer) over
a public key the person made: the seed never comes here.  An API token is shown once and kept
only as its hash."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog
from faststream.nats import NatsMessage
from nats.js.kv import KeyValue

from trainmaster import audit, kvstore, user_rules
from trainmaster.access import Credential, UserRecord, require_cluster_admin
from trainmaster.auth.users_signer import InvalidSigner, UsersSigner, load_signer
from trainmaster.decoding import decode_as
from trainmaster.identity import Directory, credential_id, new_token
from trainmaster.messages import encode
from trainmaster.user_messages import (
    IssuedCredential,
    TokenRef,
    UserCreate,
    UserCreated,
    UserGrant,
    UserIssue,
    UserList,
    UserListRequest,
    UserRef,
    UserRevoke,
)

log = structlog.get_logger()
_decode_user = msgspec.json.Decoder(UserRecord).decode
NO_SIGNER = ("job-intake has no users signing key, so it cannot sign NATS credentials (API tokens still work): "
             "give it one with TM_USERS_SIGNING_KEY_FILE (`trainmaster auth issue users-signer --dir AUTHORITY "
             "--out FILE`; the embedded stack does it by itself)")


def load_users_signer(path: Path | None) -> UsersSigner | None:
    """The users signer job-intake was given (TM_USERS_SIGNING_KEY_FILE); None without one.  A file
    given that cannot be read, or is not one, stops the start: people would get no credentials."""
    if path is None:
        log.warning("no users signing key (TM_USERS_SIGNING_KEY_FILE): people get API tokens only")
        return None
    try:
        signer = load_signer(path)
    except (OSError, InvalidSigner) as exc:
        raise RuntimeError(f"TM_USERS_SIGNING_KEY_FILE {path}: {exc}") from None
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("the users signing key file is readable by others: chmod 600 it", path=str(path))
    return signer


class Users:
    def __init__(self, kv: KeyValue, directory: Directory, signer: UsersSigner | None, max_bytes: int) -> None:
        self.kv = kv
        self.directory = directory
        self.signer = signer
        self.max_bytes = max_bytes

    def _nats_credential(self, name: str, public_key: str, now: float) -> tuple[Credential, str]:
        """A NATS credential for ``public_key`` and its JWT; refused without a signer or for a key
        that is no user key, or one another credential holds."""
        if self.signer is None:
            raise user_rules.refusal("unavailable", NO_SIGNER, "public_key")
        if (bad := user_rules.public_key_violation(public_key)) is not None:
            raise bad
        user_rules.check_key_free(public_key, self.directory.users.values())
        jwt = self.signer.sign(public_key, name, int(now))
        return Credential(credential_id(), "nats", now, public_key=public_key), jwt

    async def _change(self, name: str, decide: Callable[[UserRecord | None], UserRecord | None]) -> UserRecord:
        """Write ``decide(current)`` at the revision it was read at; the record as it is now."""
        changed = await kvstore.change(self.kv, name, decide, decode=_decode_user, encode=encode)
        assert changed.value is not None  # every decide raises for a missing user
        if changed.written:
            self.directory.put(changed.value)
        return changed.value

    # ---- handlers
    async def on_create(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        req = decode_as(msg.body, UserCreate, self.max_bytes)
        user_rules.check_cluster_admin_flag(caller, req.cluster_admin or None)
        user_rules.check_manage(caller, req.project, "adding users to it")
        now = time.time()
        credentials: list[Credential] = []
        jwt = nats_id = None
        if req.public_key is not None:
            nats_credential, jwt = self._nats_credential(req.name, req.public_key, now)
            credentials.append(nats_credential)
            nats_id = nats_credential.id
        token, token_id = None, None
        if req.token:
            token, hashed = new_token()
            token_id = credential_id()
            credentials.append(Credential(token_id, "token", now, token_hash=hashed))
        record = user_rules.new_user(req.name, req.project, req.role, credentials, caller.actor, now,
                                     req.cluster_admin)
        if await kvstore.create(self.kv, req.name, encode(record)) is None:
            raise user_rules.refusal("conflict", f"user {req.name!r} exists", hint=(
                "give it a role with `trainmaster user grant` (tm.users.grant), new credentials with "
                "`trainmaster user issue` (tm.users.issue)"))
        self.directory.put(record)
        return encode(UserCreated(req.name, req.project, req.role, nats_id, jwt, token, token_id))

    async def on_grant(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        req = decode_as(msg.body, UserGrant, self.max_bytes)
        user_rules.check_grant(caller, req)
        user = await self._change(req.name, lambda u: user_rules.granted(u, req.name, req.project, req.role,
                                                                         req.cluster_admin))
        return encode(user_rules.view(user, user_rules.visible_roles(caller, user) or {}))

    async def on_issue(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        req = decode_as(msg.body, UserIssue, self.max_bytes)
        user_rules.check_issue(caller, req.name)
        now = time.time()
        jwt = token = None
        if req.kind == "nats":
            if req.public_key is None:
                raise user_rules.refusal("invalid_request", "a nats credential needs public_key", "public_key",
                                         "make a user key pair and send its public half (the CLI does: "
                                         "trainmaster user issue NAME --out FILE)")
            credential, jwt = self._nats_credential(req.name, req.public_key, now)
        else:
            token, hashed = new_token()
            credential = Credential(credential_id(), "token", now, token_hash=hashed)
        await self._change(req.name, lambda u: user_rules.with_credential(u, req.name, credential))
        return encode(IssuedCredential(req.name, credential.id, credential.kind, jwt, token))

    async def on_revoke(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        req = decode_as(msg.body, UserRevoke, self.max_bytes)
        user_rules.check_revoke(caller, req.name, req.credential_id)
        now = time.time()
        user = await self._change(req.name, lambda u: user_rules.revoked(u, req.name, req.credential_id, now))
        return encode(user_rules.view(user, user_rules.visible_roles(caller, user) or {}))

    async def on_list(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        req = decode_as(msg.body if msg.body.strip() else b"{}", UserListRequest, self.max_bytes)
        return encode(UserList(user_rules.listed(caller, self.directory.users.values(), req.project)))

    async def on_get(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        req = decode_as(msg.body, UserRef, self.max_bytes)
        return encode(user_rules.seen_by(caller, self.directory.users.get(req.name), req.name))

    async def on_whoami(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        return encode(user_rules.whoami(caller))

    async def on_authenticate(self, msg: NatsMessage) -> bytes:
        require_cluster_admin(self.directory.caller(msg.headers), "resolving an API token")
        req = decode_as(msg.body, TokenRef, self.max_bytes)
        return encode(user_rules.whoami(self.directory.caller_of_token(req.token)))

    # ---- how the audit trail names each change (never a token or a JWT)
    @staticmethod
    async def describe_project(body: dict[str, Any], reply: dict[str, Any] | None) -> tuple[str, str, dict]:
        name = body.get("name") if isinstance(body.get("name"), str) else ""
        detail = {k: body[k] for k in ("role", "cluster_admin") if isinstance(body.get(k), str | bool)}
        return audit.project_of(body.get("project")), name, detail

    @staticmethod
    async def describe_credential(body: dict[str, Any], reply: dict[str, Any] | None) -> tuple[str, str, dict]:
        name = body.get("name") if isinstance(body.get("name"), str) else ""
        detail = {k: body[k] for k in ("kind", "credential_id") if isinstance(body.get(k), str)}
        if reply and isinstance(reply.get("credential_id"), str):
            detail["credential_id"] = reply["credential_id"]
        return audit.CLUSTER, name, detail
