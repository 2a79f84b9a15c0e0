"""Registry commands: ``trainmaster dataset|template|account|algorithm ...`` and the plan display
used by ``job create`` / ``job new-version`` before they ask to confirm (R22)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
import yaml

from trainmaster.accounts import QUOTA_LIMITS, amount, describe_quota
from trainmaster.cli.common import JsonOpt, NatsOpt, print_json, run_with_client
from trainmaster.cli.render import console, err_console, print_table, ts
from trainmaster.client import RegistryClient
from trainmaster.jobfile import JobFileError
from trainmaster.messages import AccountQuota, AccountQuotaSet

dataset_app = typer.Typer(no_args_is_help=True, help="datasets: a storage location with immutable, published versions")
template_app = typer.Typer(no_args_is_help=True, help="saved job parameters (templates; save_as in a job creates one)")
account_app = typer.Typer(no_args_is_help=True,
                          help="accounts (projects): balances, charges of ended jobs, credits, quotas")
algorithm_app = typer.Typer(no_args_is_help=True, help="the preset algorithms and their hyperparameters")


def _with_registry(nats_url: str | None, fn: Callable[[RegistryClient], Awaitable[None]]) -> None:
    run_with_client(nats_url, lambda client: fn(client.registry))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set a.b=value`` pairs as a mapping (values read as YAML scalars: 300, 0.1, true, text)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise JobFileError(f"--set {item!r}: use key=value, e.g. parameters.max_iter=300")
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out


# ----------------------------------------------------------------------------------- the plan
def show_plan(plan: dict[str, Any]) -> None:
    """The normalised spec, violations, warnings and the price per hour (R22)."""
    spec = {k: v for k, v in plan["spec"].items() if v not in (None, [], {})}
    console.print("[bold]the job, as it will be created[/bold]" + (
        f" (version {plan['next_version']})" if plan.get("next_version") else ""))
    console.out(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True).rstrip(), highlight=False)
    for v in plan["violations"]:
        err_console.print(f"[red]error[/red] {v['field']}: {v['message']} [dim]({v['code']})[/dim]")
    for w in plan["warnings"]:
        console.print(f"[yellow]warning[/yellow] {w['field']}: {w['message']} [dim]({w['code']})[/dim]")
    price = plan.get("price_per_hour")
    nodes = plan["spec"]["resources"]["node_count"]
    if price is not None:
        console.print(f"price: [bold]{price:g} {plan['currency']} per hour[/bold] while it runs "
                      f"(flavor {plan.get('flavor')} x {nodes} node(s)), billed on demand")
    if plan.get("account_balance") is not None:
        console.print(f"account {plan['spec'].get('account', 'default')}: balance {plan['account_balance']:.2f} "
                      f"{plan['currency']}")


def confirm_plan(plan: dict[str, Any], yes: bool) -> bool:
    """Show the plan; True when the job should be created (valid, and confirmed or ``--yes``)."""
    show_plan(plan)
    if not plan["valid"]:
        err_console.print(f"[red]not created[/red]: {len(plan['violations'])} problem(s) above")
        return False
    return yes or typer.confirm("create this job?", default=False)


# ----------------------------------------------------------------------------------- datasets
@dataset_app.command("create")
def dataset_create(name: str, location: Annotated[str, typer.Option(help="a local folder or s3://bucket/prefix")],
                   project: Annotated[str, typer.Option(help="the project (account) it belongs to: its viewers "
                                                             "read it, its jobs train on it")] = "default",
                   description: str = "", nats_url: NatsOpt = None) -> None:
    """Create a dataset over a storage location (then publish versions of it)."""
    loc = location if "://" in location else str(Path(location).resolve())

    async def fn(reg: RegistryClient) -> None:
        ds = await reg.call("datasets", "create", {"name": name, "location": loc, "description": description,
                                                   "project": project})
        console.print(f"created dataset {ds['name']} of project {ds.get('project', project)} over {ds['location']}")

    _with_registry(nats_url, fn)


@dataset_app.command("publish")
def dataset_publish(name: str, description: str = "", nats_url: NatsOpt = None) -> None:
    """Snapshot the dataset's files (names, sizes, checksums) as its next, immutable version."""
    async def fn(reg: RegistryClient) -> None:
        v = await reg.call("datasets", "publish", {"name": name, "description": description})
        console.print(f"published {v['dataset']} {v['version']}: {len(v['files'])} file(s), {v['total_bytes']} bytes")

    _with_registry(nats_url, fn)


@dataset_app.command("list")
def dataset_list(as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """Every dataset with its latest version."""
    async def fn(reg: RegistryClient) -> None:
        items = (await reg.call("datasets", "list"))["datasets"]
        if as_json:
            return print_json(items)
        print_table(f"{len(items)} dataset(s)", ("NAME", "LOCATION", "VERSIONS", "LATEST", "DESCRIPTION"),
                    [(d["name"], d["location"], str(len(d["versions"])),
                      d["versions"][-1]["version"] if d["versions"] else "-", d["description"]) for d in items])

    _with_registry(nats_url, fn)


@dataset_app.command("show")
def dataset_show(name: str, version: Annotated[str | None, typer.Option(help="show this version's files")] = None,
                 as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """A dataset and its versions; with --version, that version's manifest (files, sizes, checksums)."""
    async def fn(reg: RegistryClient) -> None:
        if version:
            v = await reg.call("datasets", "version", {"name": name, "version": version})
            if as_json:
                return print_json(v)
            console.print(f"{v['dataset']} {v['version']} of {v['location']}, {ts(v['created_at'])}: "
                          f"{len(v['files'])} file(s), {v['total_bytes']} bytes")
            for path, size, checksum in v["files"]:
                console.out(f"  {size:>12}  {checksum or '-':<34}  {path}", highlight=False)
            return None
        d = await reg.call("datasets", "get", {"name": name})
        if as_json:
            return print_json(d)
        console.print(f"[bold]{d['name']}[/bold] of project {d.get('project', 'default')} over {d['location']} "
                      f"{d['description']}")
        for v in d["versions"]:
            console.print(f"  {v['version']}  {ts(v['created_at'])}  {v['files']} file(s)  {v['bytes']} bytes  "
                          f"{v['description']}")
        return None

    _with_registry(nats_url, fn)


# ----------------------------------------------------------------------------------- templates
def _algorithm_of(spec: dict[str, Any]) -> str:
    algo = spec["algorithm"]
    return algo.get("preset") or algo.get("engine") or algo["source"]


@template_app.command("list")
def template_list(as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """Saved job parameters."""
    async def fn(reg: RegistryClient) -> None:
        items = (await reg.call("templates", "list"))["templates"]
        if as_json:
            return print_json(items)
        print_table(f"{len(items)} template(s)", ("NAME", "JOB NAME", "ALGORITHM", "UPDATED", "DESCRIPTION"),
                    [(t["name"], t["spec"].get("name") or "-", _algorithm_of(t["spec"]), ts(t["updated_at"]),
                      t["description"]) for t in items])

    _with_registry(nats_url, fn)


@template_app.command("show")
def template_show(name: str, nats_url: NatsOpt = None) -> None:
    """One template's job specification (YAML)."""
    async def fn(reg: RegistryClient) -> None:
        t = await reg.call("templates", "get", {"name": name})
        console.print(f"[bold]{t['name']}[/bold] {t['description']} (updated {ts(t['updated_at'])})")
        console.out(yaml.safe_dump(t["spec"], sort_keys=False).rstrip(), highlight=False)

    _with_registry(nats_url, fn)


@template_app.command("update")
def template_update(
    name: str,
    set_: Annotated[list[str] | None, typer.Option("--set", help="change a field: key.path=value")] = None,
    description: Annotated[str | None, typer.Option(help="a new description")] = None,
    nats_url: NatsOpt = None,
) -> None:
    """Change a template's fields (--set) or description."""
    async def fn(reg: RegistryClient) -> None:
        body: dict[str, Any] = {"name": name, "overrides": parse_overrides(set_ or [])}
        if description is not None:
            body["description"] = description
        t = await reg.call("templates", "update", body)
        console.print(f"updated template {t['name']}")

    _with_registry(nats_url, fn)


@template_app.command("delete")
def template_delete(name: str, nats_url: NatsOpt = None) -> None:
    async def fn(reg: RegistryClient) -> None:
        await reg.call("templates", "delete", {"name": name})
        console.print(f"deleted template {name}")

    _with_registry(nats_url, fn)


# ----------------------------------------------------------------------------------- accounts
def _account_line(a: dict[str, Any]) -> str:
    state = " [red](in arrears: jobs cannot start)[/red]" if a["balance"] < 0 else ""
    quota = f"; quota: {_quota_text(a['quota'])}" if a.get("quota") else ""
    return f"{a['name']}: {a['balance']:.2f} {a['currency']}{state}{quota}"


def _quota_text(quota: dict[str, Any] | None) -> str:
    return describe_quota(msgspec.convert(quota, AccountQuota) if quota else None)


def _use_line(a: dict[str, Any]) -> str | None:
    """What the account's placed jobs hold, against the quota's limits."""
    use, quota = a.get("in_use"), a.get("quota") or {}
    if use is None:
        return None
    parts = []
    for limit in QUOTA_LIMITS:
        most = quota.get(limit)
        parts.append(amount(use[limit], limit) + (f" of {most:g}" if most is not None else ""))
    return "  in use now: " + ", ".join(parts)


def _show_account(a: dict[str, Any]) -> None:
    console.print(_account_line(a))
    if (line := _use_line(a)) is not None:
        console.print(line)


def _limit(option: str, raw: str | None, integer: bool) -> float | int | msgspec.UnsetType | None:
    """A quota option: a number sets the limit, ``none`` removes it, absent keeps it."""
    if raw is None:
        return msgspec.UNSET
    if raw.strip().lower() in ("none", "unlimited", "-"):
        return None
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise JobFileError(f"{option} {raw!r}: give {kind} (at least 0), or none to remove the limit") from None
    return value


@account_app.command("list")
def account_list(as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    async def fn(reg: RegistryClient) -> None:
        items = (await reg.call("accounts", "list"))["accounts"]
        if as_json:
            return print_json(items)
        for a in items:
            console.print(_account_line(a))
        return None

    _with_registry(nats_url, fn)


@account_app.command("show")
def account_show(name: Annotated[str, typer.Argument(help="the account")] = "default", as_json: JsonOpt = False,
                 nats_url: NatsOpt = None) -> None:
    """Balance, quota and what the account's jobs hold now, the latest charges (one per ended job)
    and credits."""
    async def fn(reg: RegistryClient) -> None:
        a = await reg.call("accounts", "get", {"name": name})
        if as_json:
            return print_json(a)
        _show_account(a)
        for e in a["ledger"][-20:]:
            console.print(f"  {ts(e['at'])}  {e['kind']:<6} {e['amount']:>12.4f}  {e.get('job_id') or ''} {e['note']}")
        return None

    _with_registry(nats_url, fn)


@account_app.command("credit")
def account_credit(name: str, amount: float, note: str = "",
                   credit_id: Annotated[str | None, typer.Option(help="idempotency key")] = None,
                   nats_url: NatsOpt = None) -> None:
    """Add AMOUNT to an account (created if needed)."""
    async def fn(reg: RegistryClient) -> None:
        body: dict[str, Any] = {"name": name, "amount": amount, "note": note}
        if credit_id:
            body["credit_id"] = credit_id
        console.print(_account_line(await reg.call("accounts", "credit", body)))

    _with_registry(nats_url, fn)


@account_app.command("quota")
def account_quota(
    name: Annotated[str, typer.Argument(help="the account (project)")],
    cpus: Annotated[str | None, typer.Option(help="most CPUs its jobs hold at once (none: no limit)")] = None,
    gpus: Annotated[str | None, typer.Option(help="most GPUs at once (none: no limit)")] = None,
    nodes: Annotated[str | None, typer.Option(help="most nodes at once (none: no limit)")] = None,
    jobs: Annotated[str | None, typer.Option(help="most placed or running jobs at once (none: no limit)")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove every limit (then set those given)")] = False,
    as_json: JsonOpt = False,
    nats_url: NatsOpt = None,
) -> None:
    """Set an account's quota: a job that would take it over a limit waits Pending until its other
    jobs end (limits not given stay as they are)."""
    async def fn(reg: RegistryClient) -> None:
        change = AccountQuotaSet(name=name, clear=clear, cpus=_limit("--cpus", cpus, False),
                                 gpus=_limit("--gpus", gpus, True), nodes=_limit("--nodes", nodes, True),
                                 jobs=_limit("--jobs", jobs, True))
        a = await reg.call("accounts", "quota", msgspec.to_builtins(change))
        if as_json:
            return print_json(a)
        console.print(f"{a['name']}: quota {_quota_text(a.get('quota'))}")
        if (line := _use_line(a)) is not None:
            console.print(line)
        return None

    _with_registry(nats_url, fn)


# ----------------------------------------------------------------------------------- algorithms
@algorithm_app.command("list")
def algorithm_list(as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    async def fn(reg: RegistryClient) -> None:
        items = (await reg.call("algorithms", "list"))["algorithms"]
        if as_json:
            return print_json(items)
        for p in items:
            console.print(f"[bold]{p['name']}[/bold] ({p['engine']} {p['engine_version']}): {p['description']}")
        return None

    _with_registry(nats_url, fn)


@algorithm_app.command("show")
def algorithm_show(name: str, as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """A preset's hyperparameters: type, range or choices, default, what it does."""
    from trainmaster.algorithms import PresetParameter, describe

    async def fn(reg: RegistryClient) -> None:
        p = await reg.call("algorithms", "get", {"name": name})
        if as_json:
            return print_json(p)
        console.print(f"[bold]{p['name']}[/bold]: {p['description']} (engine {p['engine']} {p['engine_version']}; "
                      f"writes {', '.join(p['outputs'])})")
        specs = [PresetParameter(**param) for param in p["parameters"]]
        print_table("hyperparameters (run parameters)", ("NAME", "TAKES", "DEFAULT", "WHAT"),
                    [(spec.name, describe(spec), json.dumps(spec.default), spec.doc) for spec in specs])

    _with_registry(nats_url, fn)
