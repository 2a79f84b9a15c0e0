"""Revoked credentials, refused by nats-server itself: the people's account JWT lists the user keys
it no longer admits, and whoever holds the operator key pushes it to the servers
(``$SYS.REQ.CLAIMS.UPDATE``, as the system account).  A server that learns it closes the revoked
users' connections at once and refuses them from then on; the other servers of a cluster learn it
from that one (their account resolvers are of type ``full``).

The services refuse a revoked credential already (``trainmaster.identity``, within milliseconds of
the write to ``tm_users``); this closes the connection too.  The embedded stack pushes as the users
change (``RevocationPusher`` in the supervisor); a multi-host cluster runs
``trainmaster auth push-revocations --watch`` on the host that keeps the authority."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import Iterable

import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from trainmaster.access import UserRecord
from trainmaster.auth import jwt
from trainmaster.auth.authority import Authority
from trainmaster.auth.jwt import Permissions
from trainmaster.identity import Directory
from trainmaster.topology import Topology

log = structlog.get_logger()
CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"


class PushFailed(RuntimeError):
    pass


def pusher_permissions() -> Permissions:
    """The system-account identity that pushes account JWTs: that subject and its replies only."""
    return Permissions(publish=(CLAIMS_UPDATE,), subscribe=("_INBOX.>",))


def revoked_keys(users: Iterable[UserRecord]) -> dict[str, int]:
    """User key -> the time from which it is refused (a JWT issued at or before it is revoked): each
    revoked NATS credential, and every NATS credential of a disabled user."""
    out: dict[str, int] = {}
    for user in users:
        for credential in user.credentials:
            if credential.kind != "nats" or not credential.public_key:
                continue
            at = credential.revoked_at if credential.revoked_at is not None else user.disabled_at
            if at is not None:
                out[credential.public_key] = math.ceil(at)
    return out


def people_account_jwt(authority: Authority, topo: Topology, revoked: dict[str, int], issued_at: int) -> str:
    key, spec = authority.account_specs(topo)["USERS"]
    spec = dataclasses.replace(spec, revocations=dict(revoked))
    return jwt.encode(jwt.account_claims(key, spec, issued_at), authority.operator)


async def push(system: NATS, account_jwt: str, timeout_s: float = 5.0) -> None:
    """Give the servers an account JWT; ``PushFailed`` with the server's words if one refuses it."""
    reply = await system.request(CLAIMS_UPDATE, account_jwt.encode(), timeout=timeout_s)
    try:
        answer = json.loads(reply.data)
    except ValueError:
        raise PushFailed(f"unreadable answer to the account update: {reply.data[:200]!r}") from None
    data = answer.get("data") or {}
    error = answer.get("error") or {}
    if data.get("code") != 200:
        raise PushFailed(f"nats-server refused the account update: {error.get('description') or answer}")


class RevocationPusher:
    """Keeps the servers' people account in step with the revocations in ``tm_users``: pushes at
    start, then whenever the revoked keys change.  Each push is issued later than the one before
    (a server keeps only a newer JWT of an account)."""

    def __init__(self, authority: Authority, topo: Topology, directory: Directory, system: NATS) -> None:
        self.authority, self.topo, self.directory, self.system = authority, topo, directory, system
        self.pushed: dict[str, int] | None = None
        self.issued_at = int(time.time())

    async def push_if_changed(self) -> bool:
        revoked = revoked_keys(self.directory.users.values())
        if revoked == self.pushed:
            return False
        self.issued_at = max(int(time.time()), self.issued_at + 1)
        await push(self.system, people_account_jwt(self.authority, self.topo, revoked, self.issued_at))
        if revoked:  # the first push of none is not news
            log.info("revocations pushed to nats-server", revoked=len(revoked))
        self.pushed = revoked
        return True

    async def run(self, retry_s: float = 2.0) -> None:
        while True:
            self.directory.changed.clear()
            try:
                await self.push_if_changed()
            except (PushFailed, NatsError, TimeoutError, OSError) as exc:
                log.warning("revocations not pushed yet; trying again", error=str(exc))
                await asyncio.sleep(retry_s)
                continue
            await self.directory.changed.wait()
