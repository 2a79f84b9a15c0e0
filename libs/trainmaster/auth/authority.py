"""The signing keys of one trainmaster cluster, and what nats-server needs to trust them.

An operator key signs three accounts: ``SYS`` (nats-server's own), ``TM`` (the services and the
agents: the streams, buckets and internal subjects live here) and ``USERS`` (the people).  An
account key signs its users' JWTs, so issuing credentials needs no server at all; nats-server
learns the accounts from the config this module writes (operator JWT, system account, resolver
with the account JWTs preloaded).

The seeds are kept in one folder, each file readable by its owner only.  Whoever holds them can
mint any identity: on a multi-host cluster they stay on the host where credentials are issued
(docs/security.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePath

from trainmaster.auth import jwt, permissions
from trainmaster.auth.jwt import AccountSpec, Export, Import, Permissions, ScopedKey
from trainmaster.auth.nkeys import KeyKind, KeyPair
from trainmaster.topology import Topology

SEED_FILES = {"operator": KeyKind.OPERATOR, "system": KeyKind.ACCOUNT, "services": KeyKind.ACCOUNT,
              "users": KeyKind.ACCOUNT, "users-signing": KeyKind.ACCOUNT}
USERS_ROLE = "user"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, atomically (never readable by others,
    not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Authority:
    operator: KeyPair
    system: KeyPair
    services: KeyPair
    users: KeyPair
    users_signing: KeyPair  # a scoped key of USERS: it mints people, with a person's rights only

    @classmethod
    def load_or_create(cls, directory: Path) -> Authority:
        """The keys kept in ``directory``; the missing ones made (the first start of a cluster)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys: dict[str, KeyPair] = {}
        for name, kind in SEED_FILES.items():
            path = directory / f"{name}.nk"
            if path.exists():
                keys[name] = KeyPair.from_seed(path.read_text())
            else:
                keys[name] = KeyPair.generate(kind)
                write_private(path, keys[name].seed + "\n")
        return cls(**{name.replace("-", "_"): key for name, key in keys.items()})

    # ------------------------------------------------------------------ what the server trusts
    def account_specs(self, topo: Topology) -> dict[str, tuple[KeyPair, AccountSpec]]:
        """The services' account exports the verbs people may send (the exporter learns who asks:
        ``share``); the people's account imports them, and mints users only with its scoped key."""
        exports = tuple(Export(subject, streamed_replies=streamed) for subject, streamed in topo.user_exports())
        imports = tuple(Import(e.subject, self.services.public_key) for e in exports)
        scoped = ScopedKey(self.users_signing.public_key, USERS_ROLE, permissions.user(topo))
        return {
            "SYS": (self.system, AccountSpec("SYS")),
            "TM": (self.services, AccountSpec("TM", jetstream=True, exports=exports)),
            "USERS": (self.users, AccountSpec("USERS", imports=imports, signing_keys=(scoped,))),
        }

    def account_jwts(self, topo: Topology, now: int | None = None) -> dict[str, str]:
        """Public key -> signed account JWT, for every account."""
        at = int(time.time()) if now is None else now
        return {key.public_key: jwt.encode(jwt.account_claims(key, spec, at), self.operator)
                for key, spec in self.account_specs(topo).values()}

    def operator_jwt(self, now: int | None = None) -> str:
        at = int(time.time()) if now is None else now
        return jwt.encode(jwt.operator_claims(self.operator, "trainmaster", self.system.public_key, at),
                          self.operator)

    def server_config(self, directory: Path, topo: Topology) -> str:
        """The nats-server config lines that make it trust this authority (and nothing else):
        written into ``directory`` (the operator JWT and the resolver's store)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        operator_file = directory / "operator.jwt"
        write_private(operator_file, self.operator_jwt() + "\n")
        return self._trust(str(operator_file), directory / "accounts", topo)

    def cluster_server_config(self, resolver_dir: PurePath, topo: Topology) -> str:
        """The same trust as one file that every server of a cluster can include as it is: the
        operator JWT written inline (nats-server takes a JWT where it takes a file), and
        ``resolver_dir`` a path on each server (where it keeps the accounts it learns)."""
        return self._trust(self.operator_jwt(), resolver_dir, topo)

    def _trust(self, operator: str, resolver_dir: PurePath, topo: Topology) -> str:
        preload = "\n".join(f'    {key}: "{token}"' for key, token in self.account_jwts(topo).items())
        return (
            f'operator: "{operator}"\n'
            f"system_account: {self.system.public_key}\n"
            f'resolver: {{ type: full, dir: "{resolver_dir}", allow_delete: false, interval: "2m" }}\n'
            f"resolver_preload: {{\n{preload}\n}}\n"
        )

    # ------------------------------------------------------------------ identities
    def issue(self, name: str, account: str, permissions: Permissions, now: int | None = None,
              expires: int | None = None) -> str:
        """A creds file (a new user key and its JWT) for ``name`` in ``account`` (TM, USERS, SYS)."""
        signer = {"TM": self.services, "USERS": self.users, "SYS": self.system}[account]
        user = KeyPair.generate(KeyKind.USER)
        at = int(time.time()) if now is None else now
        token = jwt.encode(jwt.user_claims(user.public_key, name, permissions, at, expires), signer)
        return jwt.creds_text(token, user)


def sign_person(signing_key: KeyPair, users_account: str, public_key: str, name: str,
                now: int | None = None) -> str:
    """The JWT of a person whose user key is ``public_key`` (made and kept by that person: only
    the public half comes here), signed with the people's scoped key: nats-server gives it a
    person's rights (``permissions.user``), whatever the JWT would say."""
    at = int(time.time()) if now is None else now
    return jwt.encode(jwt.user_claims(public_key, name, None, at, issuer_account=users_account), signing_key)
