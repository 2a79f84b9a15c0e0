"""``trainmaster user ...``: people, their roles in projects and their credentials (``tm.users.*``).

A person's key pair is made here, on the machine of whoever runs the command: only its public
half is sent; job-intake signs the JWT, and the creds file (JWT and seed) is written here, 0600.
``TM_NATS_CREDS=alice.creds trainmaster job list`` then runs as alice."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from trainmaster.auth import jwt
from trainmaster.auth.authority import write_private
from trainmaster.auth.nkeys import KeyKind, KeyPair
from trainmaster.cli.common import JsonOpt, NatsOpt, print_json, run_with_client
from trainmaster.cli.render import console, err_console, print_table, ts
from trainmaster.client import Client

user_app = typer.Typer(no_args_is_help=True, help="people: their roles in projects and their credentials")

ProjectOpt = Annotated[str, typer.Option("--project", help="the project (a job's account)")]
RoleOpt = Annotated[str, typer.Option("--role", help="viewer, member or admin")]


def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[red]error[/red]: {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _check_writable(out: Path) -> None:
    """Refuse before asking anything: a credential whose file cannot be written is lost."""
    if out.exists():
        _fail(f"{out} exists: give another --out (a creds file is never overwritten)")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        _fail(f"cannot write {out}: {parent} is not a folder", 1)


def _write_creds(out: Path, token: str, key: KeyPair) -> None:
    try:
        write_private(out, jwt.creds_text(token, key))
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}", 1)


async def _call(client: Client, verb: str, body: dict[str, Any]) -> Any:
    return await client.registry.call("users", verb, body)


def _show_user(user: dict[str, Any]) -> None:
    roles = ", ".join(f"{p}: {r}" for p, r in user.get("roles", {}).items()) or "no role you may see"
    state = f" (disabled {ts(user['disabled_at'])})" if user.get("disabled_at") else ""
    console.print(f"{user['name']}{state}: {roles}", highlight=False)
    for c in user.get("credentials", []):
        revoked = f", revoked {ts(c['revoked_at'])}" if c.get("revoked_at") else ""
        console.print(f"  {c['id']} {c['kind']} created {ts(c['created_at'])}{revoked}", highlight=False)


@user_app.command("create")
def create(
    name: str,
    project: ProjectOpt,
    role: RoleOpt,
    out: Annotated[Path | None, typer.Option("--out", help="the creds file to write (0600); default ./NAME.creds")]
    = None,
    as_json: JsonOpt = False,
    nats_url: NatsOpt = None,
) -> None:
    """Create a user with ROLE in PROJECT: writes its creds file (its key pair is made here) and
    prints its API token once.  The cluster admin, or an admin of PROJECT."""
    path = out or Path(f"{name}.creds")
    _check_writable(path)
    key = KeyPair.generate(KeyKind.USER)

    async def go(client: Client) -> None:
        made = await _call(client, "create", {"name": name, "project": project, "role": role,
                                              "public_key": key.public_key, "token": True})
        _write_creds(path, made["jwt"], key)
        if as_json:
            print_json({"user": made["user"], "project": made["project"], "role": made["role"],
                        "nats_url": client.nats_url, "creds": str(path), "token": made.get("token")})
            return
        console.print(f"created user {made['user']}: {made['role']} of {made['project']}", highlight=False)
        console.print(f"  creds file: {escape(str(path))} (give it to {made['user']} only; it is its identity)",
                      highlight=False)
        console.print(f"  connect:    TM_NATS_URL={client.nats_url} TM_NATS_CREDS={escape(str(path))} "
                      "trainmaster user whoami", highlight=False)
        if made.get("token"):
            console.print(f"  API token (shown only now): {made['token']}", highlight=False)

    run_with_client(nats_url, go)


@user_app.command("list")
def list_(project: Annotated[str | None, typer.Option("--project", help="only the users of this project")] = None,
          as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """The users you may see: all for the cluster admin, those of your projects for a project admin."""
    async def go(client: Client) -> None:
        users = (await _call(client, "list", {"project": project} if project else {}))["users"]
        if as_json:
            return print_json(users)
        print_table(f"{len(users)} user(s)", ("NAME", "ROLES", "CREDENTIALS", "CREATED", "DISABLED"), [
            (u["name"], ", ".join(f"{p}: {r}" for p, r in u["roles"].items()),
             str(sum(1 for c in u["credentials"] if not c.get("revoked_at"))), ts(u["created_at"]),
             ts(u.get("disabled_at"))) for u in users])

    run_with_client(nats_url, go)


@user_app.command("grant")
def grant(name: str, project: ProjectOpt,
          role: Annotated[str, typer.Option("--role", help="viewer, member, admin, or none (remove)")],
          as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """Give NAME a role in PROJECT (none: take it away).  The cluster admin, or an admin of PROJECT."""
    async def go(client: Client) -> None:
        user = await _call(client, "grant", {"name": name, "project": project, "role": role})
        if as_json:
            return print_json(user)
        _show_user(user)

    run_with_client(nats_url, go)


@user_app.command("issue")
def issue(
    name: str,
    token: Annotated[bool, typer.Option("--token", help="a new API token (printed once)")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="a new creds file to write (0600)")] = None,
    as_json: JsonOpt = False,
    nats_url: NatsOpt = None,
) -> None:
    """A new credential for NAME: a creds file (--out) or an API token (--token).  Yourself, or the
    cluster admin for anyone."""
    if token == (out is not None):
        _fail("give exactly one of --token or --out PATH")
    if out is not None:
        _check_writable(out)
    key = KeyPair.generate(KeyKind.USER)

    async def go(client: Client) -> None:
        body: dict[str, Any] = {"name": name, "kind": "token"} if token else {
            "name": name, "kind": "nats", "public_key": key.public_key}
        made = await _call(client, "issue", body)
        if out is not None:
            _write_creds(out, made["jwt"], key)
        if as_json:
            shown = {k: v for k, v in made.items() if k != "jwt"}
            return print_json({**shown, "creds": str(out)} if out is not None else shown)
        if out is not None:
            console.print(f"wrote {escape(str(out))}: credential {made['credential_id']} of {name}", highlight=False)
        else:
            console.print(f"API token {made['credential_id']} of {name} (shown only now): {made['token']}",
                          highlight=False)

    run_with_client(nats_url, go)


@user_app.command("revoke")
def revoke(name: str,
           credential: Annotated[str | None, typer.Option("--credential", help="the credential's id; without "
                                                          "it, the whole user is disabled")] = None,
           as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """Revoke one credential (yours, or anyone's for the cluster admin), or disable the whole user
    (the cluster admin).  Every service refuses it within a second."""
    async def go(client: Client) -> None:
        body: dict[str, Any] = {"name": name}
        if credential:
            body["credential_id"] = credential
        user = await _call(client, "revoke", body)
        if as_json:
            return print_json(user)
        _show_user(user)

    run_with_client(nats_url, go)


@user_app.command("whoami")
def whoami(as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """Who the stack takes you for, and your roles."""
    async def go(client: Client) -> None:
        me = await _call(client, "whoami", {})
        if as_json:
            return print_json(me)
        if me["cluster_admin"]:
            console.print("the cluster admin: every right", highlight=False)
            return
        roles = ", ".join(f"{p}: {r}" for p, r in me["roles"].items()) or "none"
        console.print(f"{me['user']} (credential {me.get('credential_id')}): {roles}", highlight=False)

    run_with_client(nats_url, go)
