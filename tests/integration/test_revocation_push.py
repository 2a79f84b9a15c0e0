"""Revoked credentials refused by nats-server itself: a revocation written to ``tm_users`` is pushed
(the people's account JWT with the revoked keys, as the system account), and the server closes the
revoked person's connection and refuses it from then on; the others carry on.  Both ways that
push: the embedded stack's ``RevocationPusher`` and ``trainmaster auth push-revocations``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from support import REPO, SecuredNats

from trainmaster import bus
from trainmaster.access import Credential, UserRecord
from trainmaster.auth.credentials import connect_options
from trainmaster.auth.permissions import user_inbox
from trainmaster.auth.revocations import RevocationPusher, pusher_permissions
from trainmaster.identity import Directory
from trainmaster.messages import encode
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration
TOPO = Topology()


class Person:
    def __init__(self, name: str, creds: Path, key: str, nc: NATS, closed: asyncio.Event) -> None:
        self.name, self.creds, self.key, self.nc, self.closed = name, creds, key, nc, closed

    def record(self, revoked_at: float | None = None) -> UserRecord:
        return UserRecord(self.name, 1.0, roles={"team-a": "member"},
                          credentials=[Credential(f"cred-{self.name}", "nats", 1.0, public_key=self.key,
                                                  revoked_at=revoked_at)])


async def person(secured: SecuredNats, name: str) -> Person:
    creds, key = secured.person_creds(name)
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    nc = await nats.connect(secured.url, inbox_prefix=user_inbox(name), closed_cb=on_closed,
                            max_reconnect_attempts=3, reconnect_time_wait=0.2, **connect_options(creds))
    return Person(name, creds, key, nc, closed)


async def admitted(secured: SecuredNats, who: Person) -> bool:
    try:
        nc = await nats.connect(secured.url, inbox_prefix=user_inbox(who.name), allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=3, **connect_options(who.creds))
    except Exception as exc:  # nats-py raises the server's -ERR as a plain Error
        assert "authorization violation" in str(exc).lower(), exc
        return False
    await nc.close()
    return True


@pytest.fixture
async def admin(secured_nats: SecuredNats) -> NATS:
    nc = await bus.connect(secured_nats.settings(secured_nats.service_creds()))
    await bus.provision(nc.jetstream(), TOPO)
    yield nc
    await nc.close()


async def test_a_revoked_persons_connection_is_closed_and_refused(secured_nats: SecuredNats, admin: NATS) -> None:
    users = await admin.jetstream().key_value(TOPO.bucket_users.name)
    alice, bob = await person(secured_nats, "alice"), await person(secured_nats, "bob")
    for who in (alice, bob):
        await users.put(who.name, encode(who.record()))
    system = await nats.connect(secured_nats.url, **connect_options(
        secured_nats.creds("revocations", pusher_permissions(), account="SYS")))
    directory = await Directory(users).start()
    follow = asyncio.ensure_future(directory.follow())
    pusher = asyncio.ensure_future(RevocationPusher(secured_nats.authority, TOPO, directory, system).run())
    try:
        revoked_at = time.monotonic()
        await users.put("alice", encode(alice.record(revoked_at=time.time())))
        await asyncio.wait_for(alice.closed.wait(), 10)
        print(f"revoked connection closed {time.monotonic() - revoked_at:.3f} s after the write")  # shown with -s
        assert not await admitted(secured_nats, alice)
        assert not bob.closed.is_set() and await admitted(secured_nats, bob)
    finally:
        pusher.cancel()
        follow.cancel()
        await system.close()
        await bob.nc.close()


async def test_the_cli_pushes_the_revocations_from_the_authoritys_host(secured_nats: SecuredNats, admin: NATS,
                                                                       tmp_path: Path) -> None:
    users = await admin.jetstream().key_value(TOPO.bucket_users.name)
    carol = await person(secured_nats, "carol")
    await users.put("carol", encode(carol.record(revoked_at=time.time())))
    authority_dir = tmp_path / "authority"  # where secured_nats keeps its keys
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    env.update(TM_NATS_URL=secured_nats.url, TM_NATS_CREDS=str(secured_nats.service_creds("ops")))
    done = await asyncio.to_thread(
        subprocess.run, [str(Path(sys.executable).parent / "trainmaster"), "auth", "push-revocations",
                         "--dir", str(authority_dir)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pushed: 1 revoked credential(s)" in done.stdout
    await asyncio.wait_for(carol.closed.wait(), 10)
    assert not await admitted(secured_nats, carol)
