"""A secured bus with real services and people on it: nats-server in operator mode, job-intake and
the validator as processes with service credentials, and people of the people's account whose
user records (roles, credentials) are written into ``tm_users`` the way job-intake writes them.

``people`` is the fixture; ``PeopleStack.person(name, roles)`` gives a connection as that person
(its own inbox prefix, as ``trainmaster`` connects a person)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from support import STACK_CREDS, SecuredNats, Services

from trainmaster import bus
from trainmaster.access import Credential, UserRecord
from trainmaster.auth import permissions
from trainmaster.auth.authority import write_private
from trainmaster.auth.credentials import connect_options
from trainmaster.auth.permissions import user_inbox
from trainmaster.auth.users_signer import signer_of
from trainmaster.messages import encode
from trainmaster.topology import Topology

TOPO = Topology()


@dataclass
class PeopleStack:
    secured: SecuredNats
    services: Services
    service_creds: Path
    admin_creds: Path
    signer_file: Path
    clients: list[NATS] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.secured.url

    async def admin(self) -> NATS:
        """The cluster admin (the services' account: no Nats-Request-Info, every right)."""
        nc = await nats.connect(self.url, **connect_options(self.admin_creds))
        self.clients.append(nc)
        return nc

    async def add_user(self, name: str, roles: dict[str, str]) -> tuple[Path, str]:
        """A user with ``roles`` and one NATS credential: (its creds file, its user key)."""
        creds, key = self.secured.person_creds(name)
        record = UserRecord(name, time.time(), roles=roles,
                            credentials=[Credential(f"cred-{name}", "nats", time.time(), public_key=key)])
        admin = await self.admin()
        kv = await admin.jetstream().key_value(TOPO.bucket_users.name)
        await kv.put(name, encode(record))
        return creds, key

    async def connect_as(self, name: str, creds: Path) -> NATS:
        nc = await nats.connect(self.url, inbox_prefix=user_inbox(name), **connect_options(creds))
        self.clients.append(nc)
        return nc

    async def person(self, name: str, roles: dict[str, str]) -> NATS:
        creds, _ = await self.add_user(name, roles)
        return await self.connect_as(name, creds)

    async def close(self) -> None:
        for nc in self.clients:
            if not nc.is_closed:
                await nc.close()


@pytest.fixture
async def people(secured_nats: SecuredNats, services: Services) -> AsyncIterator[PeopleStack]:
    service_creds = secured_nats.service_creds()
    admin_creds = secured_nats.creds("admin", permissions.cluster_admin())
    signer_file = secured_nats.creds_dir / "users-signer.key"  # job-intake signs people's JWTs with it
    write_private(signer_file, signer_of(secured_nats.authority).text())
    nc = await bus.connect(secured_nats.settings(service_creds))
    try:
        await bus.provision(nc.jetstream(), TOPO)
    finally:
        await nc.close()
    STACK_CREDS[secured_nats.url] = admin_creds  # the readiness checks ask as the admin
    stack = PeopleStack(secured_nats, services, service_creds, admin_creds, signer_file)
    try:
        await services.astart(secured_nats.url, "job_intake", "validator",
                              env={"TM_NATS_CREDS": str(service_creds)},
                              per_service_env={"job_intake": {"TM_USERS_SIGNING_KEY_FILE": str(signer_file)}})
        yield stack
    finally:
        await stack.close()
        STACK_CREDS.pop(secured_nats.url, None)
