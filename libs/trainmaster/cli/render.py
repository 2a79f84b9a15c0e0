"""How the CLI shows jobs, events and errors (rich)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainmaster.client import ApiError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

STATUS_STYLE = {"Succeeded": "green", "Failed": "red", "Stopped": "yellow", "Running": "cyan"}


def ts(value: float | None) -> str:
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def status(text: str) -> str:
    style = STATUS_STYLE.get(text)
    return f"[{style}]{text}[/{style}]" if style else text


def show_error(exc: ApiError) -> None:
    if exc.details and exc.code == "validation_failed":
        err_console.print(f"[red]error[/red] ({exc.code}): the job is not valid, {len(exc.details)} problem(s):")
    else:
        # the stack's words are text, not markup: a rule like '^[a-z0-9]...' must print as it is
        err_console.print(f"[red]error[/red] ({escape(str(exc.code))}): {escape(str(exc))}")
    for d in exc.details:
        err_console.print(f"  - {escape(str(d.get('field')))}: {escape(str(d.get('message')))} "
                          f"[dim]({escape(str(d.get('code')))})[/dim]")
    if exc.job:
        err_console.print(f"  job {exc.job.get('id')} {exc.job.get('name')} {exc.job.get('version')} "
                          f"is {exc.job.get('status')}")


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], no_wrap: bool = False) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, no_wrap=no_wrap)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def job_table(jobs: list[dict[str, Any]], total: int) -> None:
    print_table(f"{len(jobs)} of {total} jobs", ("ID", "NAME", "VERSION", "STATUS", "CREATED", "UPDATED"),
                [(j["id"], j["name"], j["version"], status(j["status"]), ts(j["created_at"]), ts(j["updated_at"]))
                 for j in jobs], no_wrap=True)


def job_details(job: dict[str, Any]) -> None:
    spec = job["spec"]
    algo = spec["algorithm"]
    console.print(f"[bold]{job['name']} {job['version']}[/bold]  {job['id']}  {status(job['status'])}")
    if spec.get("description"):
        console.print(f"  {spec['description']}")
    console.print(f"  created {ts(job['created_at'])}, updated {ts(job['updated_at'])}, attempt {job['attempt']}")
    console.print(f"  algorithm: {algo['source']} {algo.get('engine') or ''} {algo.get('engine_version') or ''} "
                  f"{algo.get('boot_file') or ''}")
    sources = [d.get("path") or f"dataset {d.get('dataset')} {d.get('version') or ''}" for d in spec["data"]]
    console.print(f"  data: {', '.join(sources) or '-'}")
    params = " ".join(f"--{k}={v}" for k, v in spec["parameters"].items())
    console.print(f"  parameters: {params or '-'}")
    res = spec["resources"]
    console.print(f"  resources: pool {res['pool']}, flavor {res.get('flavor') or '(default)'}, "
                  f"{res['node_count']} node(s); account {spec.get('account', 'default')}")
    console.print(f"  output: {spec.get('output_path')}")
    console.print(f"  logs:   {spec.get('log_path')}")
    if job.get("pending_reason") and job["status"] == "Pending":  # what the scheduler said it waits for
        console.print(f"  [yellow]waiting:[/yellow] {job['pending_reason']}")
    for p in job.get("placements", []):
        console.print(f"  node {p['node']} on agent {p['agent_id']} ({p['host']})")
    if job.get("failure_reason"):
        console.print(f"  [red]failure:[/red] {job['failure_reason']}")
    for v in job.get("violations", []):
        console.print(f"    - {v['field']}: {v['message']} [dim]({v['code']})[/dim]")
    for w in job.get("warnings", []):
        console.print(f"  [yellow]warning[/yellow] {w['field']}: {w['message']} [dim]({w['code']})[/dim]")
    if job.get("exit_code") is not None:
        console.print(f"  exit code: {job['exit_code']}")
    if job.get("billing"):  # what the job cost (R23)
        b = job["billing"]
        console.print(f"  billed: {b['duration_s']:.1f} s at {b['price_per_hour']:g} {b['currency']}/h = "
                      f"{b['cost']:.4f} {b['currency']} to account {b['account']}")
    print_table("history", ("#", "TIME", "CHANGE", "STATUS", "REASON"),
                [(str(h["seq"]), ts(h["at"]), h["change"], status(h["status"]), h.get("reason") or "")
                 for h in job["history"]])


def event_line(event: dict[str, Any]) -> str:
    data = event["data"]
    extra = f" — {data['reason']}" if data.get("reason") else ""
    return f"{event['time'][11:19]}  {status(data['status'])}  [dim]{event['type']}[/dim]{extra}"
