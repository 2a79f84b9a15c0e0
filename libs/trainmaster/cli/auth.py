"""``trainmaster auth``: the keys of a secured cluster and the credentials they sign, run on the one
host that keeps them (docs/security.md).  None of these commands needs the bus.

``init`` makes (or loads) the authority; ``server-config`` writes the file that every nats-server
of the cluster includes to trust it; ``issue`` writes one creds file per service, agent or admin,
and job-intake's users signer.
Exit codes: 2 for what the caller can fix by asking differently (no authority there, a bad name,
a creds file that exists), 1 for a file that cannot be read or written.
"""

from __future__ import annotations

import asyncio
import enum
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, NoReturn

import nats
import typer
from rich.markup import escape

from trainmaster.auth import permissions
from trainmaster.auth.authority import SEED_FILES, Authority, write_private
from trainmaster.auth.credentials import connect_options
from trainmaster.auth.jwt import Permissions, parse_creds
from trainmaster.auth.local import local_admin_creds
from trainmaster.auth.nkeys import InvalidKey
from trainmaster.auth.revocations import RevocationPusher, pusher_permissions
from trainmaster.auth.users_signer import signer_of
from trainmaster.cli.common import JsonOpt, print_json, run
from trainmaster.cli.render import console, err_console
from trainmaster.identity import Directory
from trainmaster.names import NAME_RE, TOKEN_RE
from trainmaster.settings import get_settings
from trainmaster.topology import Topology, topology_from_settings

# seed file -> what it signs ("USERS-scoped": people, with a person's rights only)
ROLES = {"operator": "operator", "system": "SYS", "services": "TM", "users": "USERS", "users-signing": "USERS-scoped"}
# where each server keeps the accounts its resolver learns (deploy/nats/*.conf)
RESOLVER_DIR = PurePosixPath("/var/lib/trainmaster/nats-accounts")

auth_app = typer.Typer(no_args_is_help=True,
                       help="the cluster's keys and the credentials they sign (docs/security.md)")
issue_app = typer.Typer(no_args_is_help=True, help="write a creds file: one identity on the bus")
auth_app.add_typer(issue_app, name="issue")

DirOpt = Annotated[Path, typer.Option("--dir", help="the authority's folder (its seeds: keep it on this host only)")]
OutOpt = Annotated[Path, typer.Option("--out", help="the creds file to write (0600)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace an existing creds file (the old one stays "
                                        "valid: nothing revokes it yet)")]


# ----------------------------------------------------------------------------------- grants
class IdentityKind(enum.StrEnum):
    SERVICE = "service"
    AGENT = "agent"
    ADMIN = "admin"


@dataclass(frozen=True)
class Grant:
    account: str
    permissions: Permissions


def grant(kind: IdentityKind, name: str, topo: Topology) -> Grant:
    """The account and permissions of an identity; ValueError for a name the bus cannot carry (an
    agent's id is a subject token of its own subjects)."""
    if kind is IdentityKind.AGENT:
        if not TOKEN_RE.fullmatch(name):
            raise ValueError(f"{name!r} is no agent id: letters, digits, '_' and '-', at most 128 "
                             "(the agent's TM_AGENT_ID)")
        return Grant("TM", permissions.agent(topo, name))
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is no {kind} name: letters, digits, '_' and '-', at most 64")
    return Grant("TM", permissions.service() if kind is IdentityKind.SERVICE else permissions.cluster_admin())


# ----------------------------------------------------------------------------------- shell
def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[red]error[/red]: {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _existing_authority(directory: Path) -> Authority:
    """The authority kept in ``directory``; never a new one (credentials signed by keys that no
    server trusts would only fail later, on connect)."""
    if not directory.is_dir():
        _fail(f"no authority in {directory}: make it with `trainmaster auth init --dir {directory}`")
    missing = [f"{name}.nk" for name in SEED_FILES if not (directory / f"{name}.nk").is_file()]
    if missing:
        _fail(f"{directory} holds no complete authority ({', '.join(missing)} missing): give the folder "
              "`trainmaster auth init` made")
    try:
        return Authority.load_or_create(directory)
    except (OSError, InvalidKey) as exc:
        _fail(f"cannot read the authority in {directory}: {exc}", 1)


def _write(path: Path, text: str) -> None:
    if path.is_dir():
        _fail(f"{path} is a folder: give the path of the file to write")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        _fail(f"cannot write {path}: {blocking} is a file, not a folder", 1)
    try:
        write_private(path, text)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}", 1)


@auth_app.command("init")
def init(directory: DirOpt, as_json: JsonOpt = False) -> None:
    """Make the cluster's keys in --dir (or load those there): the operator and the accounts SYS,
    TM (services and agents) and USERS.  Prints the public keys."""
    existed = {name for name in SEED_FILES if (directory / f"{name}.nk").is_file()}
    try:
        authority = Authority.load_or_create(directory)
    except (OSError, InvalidKey) as exc:
        _fail(f"cannot make or read the authority in {directory}: {exc}", 1)
    pairs = {"operator": authority.operator, "system": authority.system, "services": authority.services,
             "users": authority.users, "users-signing": authority.users_signing}
    keys = {ROLES[name]: pair.public_key for name, pair in pairs.items()}
    if as_json:
        print_json({"dir": str(directory), "created": [ROLES[n] for n in SEED_FILES if n not in existed and n in ROLES],
                    "public_keys": keys})
        return
    state = "loaded" if existed == set(SEED_FILES) else "made" if not existed else "completed"
    console.print(f"authority {state} in {escape(str(directory))}", highlight=False)
    for role, key in keys.items():
        console.print(f"  {'operator' if role == 'operator' else 'account ' + role:<16} {key}", highlight=False)
    if stat.S_IMODE(directory.stat().st_mode) & 0o077:
        err_console.print(f"[yellow]warning[/yellow]: others may enter {escape(str(directory))}: "
                          f"`chmod 700 {escape(str(directory))}`", highlight=False)


@auth_app.command("server-config")
def server_config(
    directory: DirOpt,
    out: Annotated[Path, typer.Option("--out", help="the include file to write")],
    resolver_dir: Annotated[str, typer.Option(help="where each server keeps the accounts it learns (a path on "
                                              "the servers)")] = str(RESOLVER_DIR),
) -> None:
    """Write the file every nats-server of the cluster includes to trust this authority (and no
    one else): the operator, the system account, the accounts.  The same file for every server."""
    authority = _existing_authority(directory)
    _write(out, authority.cluster_server_config(PurePosixPath(resolver_dir), topology_from_settings()))
    console.print(f"wrote {escape(str(out))}: copy it beside every server's nats.conf (deploy/nats/*.conf "
                  "include it)", highlight=False)


def _issue(kind: IdentityKind, name: str, directory: Path, out: Path, force: bool, as_json: bool) -> None:
    try:
        granted = grant(kind, name, topology_from_settings())
    except ValueError as exc:
        _fail(str(exc))
    if out.exists() and not out.is_dir() and not force:
        _fail(f"{out} exists: give --force to replace it")
    authority = _existing_authority(directory)
    text = authority.issue(name, granted.account, granted.permissions)
    _write(out, text)
    public_key = parse_creds(text)[1].public_key
    if as_json:
        print_json({"name": name, "kind": kind.value, "account": granted.account, "public_key": public_key,
                    "creds": str(out)})
        return
    console.print(f"wrote {escape(str(out))}: {kind.value} {name} in account {granted.account} ({public_key}); "
                  f"give it as TM_NATS_CREDS", highlight=False)


@issue_app.command("service")
def issue_service(name: Annotated[str, typer.Argument(help="e.g. scheduler, job-intake-2")], directory: DirOpt,
                  out: OutOpt, force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Creds of a service (job-intake, validator, scheduler, notifier): every subject of the TM account."""
    _issue(IdentityKind.SERVICE, name, directory, out, force, as_json)


@issue_app.command("agent")
def issue_agent(agent_id: Annotated[str, typer.Argument(help="the agent's TM_AGENT_ID")], directory: DirOpt,
                out: OutOpt, force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Creds of one executor agent: its own commands, heartbeats, status and logs only (subjects
    under TM_SUBJECT_PREFIX, which must be the cluster's)."""
    _issue(IdentityKind.AGENT, agent_id, directory, out, force, as_json)


@issue_app.command("admin")
def issue_admin(name: Annotated[str, typer.Argument(help="who holds it, e.g. ops")], directory: DirOpt,
                out: OutOpt, force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Creds of a cluster admin (`trainmaster provision`, the CLI): every subject of the TM account."""
    _issue(IdentityKind.ADMIN, name, directory, out, force, as_json)


@auth_app.command("push-revocations")
def push_revocations(
    directory: DirOpt,
    watch: Annotated[bool, typer.Option("--watch", help="keep pushing as users are revoked (run it as a "
                                        "service on the authority's host)")] = False,
) -> None:
    """Tell the NATS servers which people's credentials are revoked (from tm_users), so that they
    close those connections and refuse them.  Runs where the authority's keys are: it signs the
    people's account anew.  Reads the users with TM_NATS_CREDS (a cluster admin's)."""
    authority = _existing_authority(directory)
    run(lambda: _push_revocations(authority, watch))


async def _push_revocations(authority: Authority, watch: bool) -> int:
    s = get_settings()
    topo = topology_from_settings()
    creds = s.bus.nats_creds or local_admin_creds(s.embedded.data_dir)
    with tempfile.TemporaryDirectory(prefix="tm-revocations-") as private:  # 0700: the system identity's seed
        system_creds = Path(private) / "revocations.creds"
        write_private(system_creds, authority.issue("revocations", "SYS", pusher_permissions()))
        users = await nats.connect(s.bus.nats_url, **connect_options(creds, s.bus.nats_ca_file))
        system = await nats.connect(s.bus.nats_url, **connect_options(system_creds, s.bus.nats_ca_file))
        try:
            directory = await Directory(await users.jetstream().key_value(topo.bucket_users.name)).start()
            pusher = RevocationPusher(authority, topo, directory, system)
            if not watch:
                await pusher.push_if_changed()
                console.print(f"pushed: {len(pusher.pushed or {})} revoked credential(s)", highlight=False)
                return 0
            follow = asyncio.ensure_future(directory.follow())
            try:
                await pusher.run()
            finally:
                follow.cancel()
        finally:
            await users.close()
            await system.close()
    return 0


@issue_app.command("users-signer")
def issue_users_signer(directory: DirOpt,
                       out: Annotated[Path, typer.Option("--out", help="the signer file to write (0600)")],
                       force: Annotated[bool, typer.Option("--force", help="replace an existing file")] = False,
                       as_json: JsonOpt = False) -> None:
    """job-intake's users signer (its TM_USERS_SIGNING_KEY_FILE): the people's scoped signing key,
    with which it signs people's NATS credentials (each with a person's rights only)."""
    if out.exists() and not out.is_dir() and not force:
        _fail(f"{out} exists: give --force to replace it")
    signer = signer_of(_existing_authority(directory))
    _write(out, signer.text())
    if as_json:
        print_json({"signer": str(out), "signing_key": signer.key.public_key, "account": signer.account})
        return
    console.print(f"wrote {escape(str(out))}: give it to job-intake as TM_USERS_SIGNING_KEY_FILE (keep it 0600, "
                  "on job-intake's hosts only)", highlight=False)
