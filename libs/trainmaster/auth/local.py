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
    <data_dir>/auth/tls/             with TLS on (``up --tls``): the stack's CA and server certificate
                                     (trainmaster.auth.localtls)
    <data_dir>/auth/nats-ca          with TLS on: the path of the CA the stack's clients trust (so the
                                     CLI run from here finds it); removed by a start without TLS

Everything is readable by its owner only; a process of another user on the host cannot use the bus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainmaster.auth import permissions
from trainmaster.auth.authority import Authority, write_private
from trainmaster.auth.localtls import ServerTls
from trainmaster.auth.revocations import pusher_permissions
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
    def revocations_creds(self) -> Path:
        """The system account's identity that pushes revocations to nats-server (the supervisor's)."""
        return self.root / "creds" / "revocations.creds"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def ca_record(self) -> Path:
        return self.root / "nats-ca"

    @property
    def users_signer_file(self) -> Path:
        return self.root / "users-signer.key"

    def creds_of(self, identity: str) -> Path:
        return self.root / "creds" / f"{identity}.creds"

    def prepare(self, topo: Topology, services: list[str], agent_ids: list[str],
                tls: ServerTls | None = None) -> Authority:
        """Keys (kept), the server's config (with ``tls``: served over TLS) and every identity's
        creds (issued anew)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # its files are private anyway; a listing of it is nobody's business either
        authority = Authority.load_or_create(self.root / "keys")
        config = authority.server_config(self.root / "server", topo)
        write_private(self.server_config_file, config + (tls.config() if tls is not None else ""))
        if tls is not None and tls.ca_file is not None:
            write_private(self.ca_record, f"{tls.ca_file.resolve()}\n")
        else:
            self.ca_record.unlink(missing_ok=True)
        for name in services:
            write_private(self.creds_of(name), authority.issue(name, "TM", permissions.service()))
        for agent_id in agent_ids:
            write_private(self.creds_of(f"agent-{agent_id}"),
                          authority.issue(f"agent-{agent_id}", "TM", permissions.agent(topo, agent_id)))
        write_private(self.admin_creds, authority.issue("admin", "TM", permissions.cluster_admin()))
        write_private(self.revocations_creds, authority.issue("revocations", "SYS", pusher_permissions()))
        write_private(self.users_signer_file, signer_of(authority).text())
        return authority


def local_admin_creds(data_dir: Path) -> Path | None:
    """The local admin's creds of an embedded stack run from here, if there is one."""
    path = LocalAuth(data_dir).admin_creds
    return path if path.exists() else None


def local_ca_file(data_dir: Path) -> Path | None:
    """The CA of an embedded stack run from here with TLS on (its clients trust it alone), if any."""
    record = LocalAuth(data_dir).ca_record
    try:
        path = Path(record.read_text().strip())
    except OSError:
        return None
    return path if path.exists() else None
