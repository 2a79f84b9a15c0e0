"""The identities of the embedded stack (``trainmaster up`` / ``make run``), kept under the data
folder: the authority's keys, the nats-server config that trusts them, one creds file per service
and agent, and the local cluster admin the CLI uses when nothing else is configured.

    <data_dir>/auth/keys/*.nk        the signing keys (made on the first start, kept after)
    <data_dir>/auth/server/          nats-server's include file, operator JWT, account store
    <data_dir>/auth/creds/*.creds    one per service and agent (issued anew at each start)
    <data_dir>/auth/admin.creds      the local cluster admin
    <data_dir>/auth/users-signer.key job-intake's key for people's credentials (auth/users_signer.py)
    <data_dir>/auth/secrets.key      the notifier's keys for webhook signing secrets at rest (made on
                                     the first start, kept after: trainmaster.secretbox)

Everything is readable by its owner only; a process of another user on the host cannot use the bus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainmaster.auth import permissions
from trainmaster.auth.authority import Authority, write_private
from trainmaster.auth.users_signer import signer_of
from trainmaster.secretbox import ensure_key_file
from trainmaster.topology import Topology


@dataclass(frozen=True)
class LocalAuth:
    data_dir: Path

    @property
    def root(self) -> Path:
        return self.data_dir / "auth"

    @property
    def admin_creds(self) -> Path:
        return self.root / "admin.creds"

    @property
    def server_config_file(self) -> Path:
        return self.root / "server" / "auth.conf"

    @property
    def secrets_key_file(self) -> Path:
        return self.root / "secrets.key"

    def ensure_secrets_key(self) -> Path:
        """The notifier's key file, made with one new key on the first start and kept after."""
        ensure_key_file(self.secrets_key_file)
        return self.secrets_key_file

    @property
    def users_signer_file(self) -> Path:
        return self.root / "users-signer.key"

    def creds_of(self, identity: str) -> Path:
        return self.root / "creds" / f"{identity}.creds"

    def prepare(self, topo: Topology, services: list[str], agent_ids: list[str]) -> Authority:
        """Keys (kept), the server's config and every identity's creds (issued anew)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # its files are private anyway; a listing of it is nobody's business either
        authority = Authority.load_or_create(self.root / "keys")
        write_private(self.server_config_file, authority.server_config(self.root / "server", topo))
        for name in services:
            write_private(self.creds_of(name), authority.issue(name, "TM", permissions.service()))
        for agent_id in agent_ids:
            write_private(self.creds_of(f"agent-{agent_id}"),
                          authority.issue(f"agent-{agent_id}", "TM", permissions.agent(topo, agent_id)))
        write_private(self.admin_creds, authority.issue("admin", "TM", permissions.cluster_admin()))
        write_private(self.users_signer_file, signer_of(authority).text())
        return authority


def local_admin_creds(data_dir: Path) -> Path | None:
    """The local admin's creds of an embedded stack run from here, if there is one."""
    path = LocalAuth(data_dir).admin_creds
    return path if path.exists() else None
