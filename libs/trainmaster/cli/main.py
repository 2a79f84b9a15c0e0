"""The ``trainmaster`` command: bring the stack up, and drive jobs through the public contract."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from trainmaster.auth.local import local_admin_creds, local_ca_file
from trainmaster.cli.audit import audit_cmd
from trainmaster.cli.auth import auth_app
from trainmaster.cli.common import JsonOpt, NatsOpt, connect, print_json, run, run_with_client
from trainmaster.cli.registry import (
    account_app,
    algorithm_app,
    confirm_plan,
    dataset_app,
    parse_overrides,
    show_plan,
    template_app,
)
from trainmaster.cli.render import console, err_console, event_line, job_details, job_table, show_error, status
from trainmaster.cli.secrets import secrets_app
from trainmaster.cli.topics import topic_app
from trainmaster.cli.users import user_app
from trainmaster.client import ApiError, Client
from trainmaster.jobfile import apply_overrides, load_job_file
from trainmaster.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, help="trainmaster: self-hosted training jobs over NATS JetStream")
job_app = typer.Typer(no_args_is_help=True, help="create, list, show, follow and stop training jobs")
agent_app = typer.Typer(no_args_is_help=True, help="the executor agents the scheduler knows")
app.add_typer(job_app, name="job")
app.add_typer(agent_app, name="agent")
app.add_typer(topic_app, name="topic")  # notifications (cli/topics.py)
app.add_typer(secrets_app, name="secrets")  # the key file of webhook secrets at rest (cli/secrets.py)
# datasets, templates, accounts, preset algorithms (cli/registry.py)
app.add_typer(dataset_app, name="dataset")
app.add_typer(template_app, name="template")
app.add_typer(account_app, name="account")
app.add_typer(algorithm_app, name="algorithm")
app.command("audit")(audit_cmd)  # who did what (cli/audit.py)
app.add_typer(auth_app, name="auth")  # keys and creds of a secured cluster (cli/auth.py)
app.add_typer(user_app, name="user")  # people, roles, credentials (cli/users.py)

REPO_ROOT = Path(__file__).resolve().parents[3]
SAMPLE_JOB = REPO_ROOT / "examples" / "sklearn-iris" / "job.yaml"


async def follow_job(client: Client, job_id: str, with_logs: bool = True) -> dict[str, Any]:
    """Print the job's events and its log lines until it ends; return the final job."""
    async def print_logs() -> None:
        async for node, line in client.logs(job_id, follow=True):
            console.out(f"  node {node} | {line}", highlight=False)

    log_task = asyncio.ensure_future(print_logs()) if with_logs else None
    async for event in client.events(job_id):
        console.print(event_line(event))
    if log_task is not None:
        try:
            await asyncio.wait_for(log_task, 10)
        except TimeoutError:
            pass
    return await client.get(job_id)


def exit_code(job: dict[str, Any]) -> int:
    """A command that waited for a job exits 0 only when the job succeeded."""
    return 0 if job["status"] == "Succeeded" else 1


async def report_created(client: Client, job: dict[str, Any], follow: bool) -> int:
    """Say which job was created; with ``follow``, stay until it ends and say how it ended."""
    console.print(f"created {job['name']} {job['version']}: {job['id']} ({status(job['status'])})")
    if not follow:
        return 0
    final = await follow_job(client, job["id"])
    console.print(f"{final['name']} {final['version']} {status(final['status'])}"
                  + (f": {final['failure_reason']}" if final.get("failure_reason") else ""))
    return exit_code(final)


# ----------------------------------------------------------------------------------- stack
@app.command()
def up(
    agents: Annotated[int, typer.Option(help="local executor agents to start")] = 1,
    pool: Annotated[str, typer.Option(help="pool of the local agents")] = "cpu",
    tls: Annotated[bool, typer.Option("--tls", help="serve the bus over TLS with a CA the stack makes "
                                      "(TM_EMBEDDED_TLS)")] = False,
) -> None:
    """Start nats-server, the services (the HTTP API too) and local agents; Ctrl-C stops everything."""
    from trainmaster.supervisor import AgentConf, Stack

    settings = with_tls(get_settings()) if tls else get_settings()
    stack = Stack(settings, [AgentConf(f"local-{i + 1}", pool) for i in range(agents)], echo=console.print)

    async def ready(url: str) -> None:
        console.print(f"trainmaster is up: NATS at {url}, data in {stack.data_dir}")
        console.print(f"authentication is on: the CLI run from here uses the local admin "
                      f"({stack.auth.admin_creds}); elsewhere set TM_NATS_CREDS to it")
        if stack.ca_file is not None:
            console.print(f"TLS is on: clients trust the CA {stack.ca_file} (the CLI run from here finds it; "
                          "elsewhere set TM_NATS_CA_FILE to it)")
        show_http_api(stack)
        console.print(f"service logs in {stack.data_dir / 'logs'}; Ctrl-C stops the stack")

    _run_stack(stack, ready)


def show_http_api(stack: Any) -> None:
    """Where the HTTP API answers and how to log in to it."""
    console.print(f"HTTP API at {stack.http_url} (OpenAPI: {stack.http_url}/openapi.json)")
    console.print(f"web console at {stack.http_url.removesuffix('/api/v1')}/ (log in with the admin token below)")
    if stack.admin_token_file.exists():
        console.print(f"  token: in {stack.admin_token_file} (the cluster admin `admin`; send it as "
                      "`Authorization: Bearer <token>`)")


def with_tls(settings: Settings) -> Settings:
    """``settings`` with the embedded stack's TLS turned on."""
    return settings.model_copy(update={"embedded": settings.embedded.model_copy(update={"embedded_tls": True})})


def _run_stack(stack: Any, after_start: Callable[[str], Awaitable[None]]) -> None:
    from trainmaster.supervisor import run_until_signalled

    try:
        asyncio.run(run_until_signalled(stack, after_start))
    except RuntimeError as exc:
        err_console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(1) from None


@app.command()
def demo(
    job_file: Annotated[Path, typer.Option("--file", "-f", help="the job to run")] = SAMPLE_JOB,
    exit_after: Annotated[bool, typer.Option("--exit", help="stop the stack once the job ended")] = False,
) -> None:
    """What `make run` does: start the stack, run the sample scikit-learn job end to end while
    showing its status and logs, print where the model and logs went, keep the stack up."""
    from trainmaster.supervisor import AgentConf, Stack

    settings = get_settings()
    stack = Stack(settings, [AgentConf("local-1", "cpu")], echo=console.print)
    outcome: dict[str, Any] = {}

    async def run_sample(url: str) -> None:
        console.print(f"trainmaster is up: NATS at {url}, data in {stack.data_dir}")
        show_http_api(stack)
        spec = load_job_file(job_file)
        if job_file == SAMPLE_JOB:
            # under this stack's default storage root, wherever TM_DATA_DIR points
            for field, folder in (("output_path", "outputs"), ("log_path", "logs")):
                spec[field] = str(stack.data_dir / "storage" / folder / spec["name"])
        async with Client(url, prefix=settings.bus.subject_prefix, timeout=60,
                          creds=stack.auth.admin_creds, ca_file=stack.ca_file) as client:
            await _wait_for_agents(client)
            try:
                job = await client.create(spec)
            except ApiError as exc:
                show_error(exc)
                outcome["status"] = "Failed"
                return
            console.print(f"submitted [bold]{job['name']} {job['version']}[/bold] as {job['id']}")
            final = await follow_job(client, job["id"])
            outcome["status"] = final["status"]
            console.print(f"\n{final['name']} {final['version']} ended {status(final['status'])}")
            if final.get("failure_reason"):
                console.print(f"  reason: {final['failure_reason']}")
            console.print(f"  model and metrics: {final['spec']['output_path']}")
            console.print(f"  logs:              {final['spec']['log_path']}")
            console.print(f"  details:           trainmaster job show {final['id']}")
        if exit_after:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        else:
            console.print("\nthe stack stays up (try `trainmaster job list`); Ctrl-C stops it")

    _run_stack(stack, run_sample)
    if outcome.get("status") != "Succeeded":
        raise typer.Exit(1)


async def _wait_for_agents(client: Client, timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            if await client.agents():
                return
        except Exception:  # services still starting: no responder yet
            pass
        await asyncio.sleep(0.3)
    raise TimeoutError("no executor agent registered within 30 s")


SERVICE_MODULES = {
    "job-intake": "services.job_intake.app",
    "validator": "services.validator.app",
    "scheduler": "services.scheduler.app",
    "notifier": "services.notifier.app",
    "executor-agent": "services.executor_agent.app",
    "api-gateway": "services.api_gateway.server",
}


@app.command()
def service(name: Annotated[str, typer.Argument(help=", ".join(SERVICE_MODULES))]) -> None:
    """Run one service in the foreground (what a systemd unit or a container runs on each host)."""
    import importlib

    from trainmaster.service import run_service

    if name not in SERVICE_MODULES:
        err_console.print(f"[red]error[/red]: unknown service {name!r}; choose one of {', '.join(SERVICE_MODULES)}")
        raise typer.Exit(2)
    module = importlib.import_module(SERVICE_MODULES[name])
    if name == "api-gateway":  # an HTTP server (uvicorn), not a bus service's setup
        module.main()
        return
    run_service(name, module.setup)


@app.command("nats-health")
def nats_health_cmd(
    store: Annotated[Path, typer.Option(help="the server's JetStream store_dir")],
    monitor: Annotated[str, typer.Option(help="the server's monitoring URL")] = "http://127.0.0.1:8222",
) -> None:
    """Exit 1 when nats-server failed a store write (a full disk) and now has room again: it needs a
    restart to write that stream again (it neither heals nor exits by itself). For a watchdog timer:
    `trainmaster nats-health --store DIR || systemctl restart nats-server`."""
    from trainmaster.nats_health import needs_restart

    reason = needs_restart(monitor, store)
    if reason is not None:
        err_console.print(f"nats-server needs a restart: {reason}")
        raise typer.Exit(1)
    console.print(f"nats-server's store: no write error that a restart would clear now (asked {monitor}/healthz; "
                  "a server that does not answer is its init system's to restart)")


@app.command("provision")
def provision_cmd(nats_url: NatsOpt = None) -> None:
    """Create or update every stream, KV bucket and consumer (replicas from TM_STREAM_REPLICAS)."""
    from trainmaster.bus import connect as connect_bus
    from trainmaster.bus import provision
    from trainmaster.topology import topology_from_settings

    async def go() -> None:
        settings = get_settings()
        creds = settings.bus.nats_creds or local_admin_creds(settings.embedded.data_dir)
        ca_file = settings.bus.nats_ca_file or local_ca_file(settings.embedded.data_dir)
        settings = Settings(bus=settings.bus, nats_url=nats_url or settings.bus.nats_url, nats_creds=creds,
                            nats_ca_file=ca_file)
        nc = await connect_bus(settings, connect_timeout=5)
        try:
            topo = topology_from_settings()
            await provision(nc.jetstream(), topo)
            console.print(f"provisioned {len(topo.streams)} streams, {len(topo.buckets)} buckets, "
                          f"{len(topo.consumers)} consumers (replicas {topo.replicas})")
        finally:
            await nc.close()

    run(go)


# ----------------------------------------------------------------------------------- jobs
@job_app.command("create")
def job_create(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="job file, YAML or JSON")] = None,
    template: Annotated[str | None, typer.Option(help="start from saved job parameters (a template)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field: key.path=value")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="create without showing the plan and asking")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="show status and logs until the job ends")] = False,
    request_id: Annotated[str | None, typer.Option(help="idempotency key: a retry creates no second job")] = None,
    nats_url: NatsOpt = None,
) -> None:
    """Create a job from a file or a template: shows the normalised spec, warnings and the price per
    hour, and asks to confirm (unless --yes).  With --follow, stay until it ends (exit 0 only if it
    succeeded)."""
    if (file is None) == (template is None):
        err_console.print("[red]error[/red]: give exactly one of --file FILE or --template NAME")
        raise typer.Exit(2)

    async def go(client: Client) -> int:
        if template is not None:
            spec = (await client.registry.call("templates", "get", {"name": template}))["spec"]
        else:
            assert file is not None
            spec = load_job_file(file)
        spec = apply_overrides(spec, set_ or [])
        if not yes and not confirm_plan(await client.plan(spec), yes):
            return 1
        return await report_created(client, await client.create(spec, request_id), follow)

    run_with_client(nats_url, go)


@job_app.command("plan")
def job_plan(
    file: Annotated[Path, typer.Option("--file", "-f", help="job file, YAML or JSON")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field: key.path=value")] = None,
    as_json: JsonOpt = False,
    nats_url: NatsOpt = None,
) -> None:
    """Dry run: the normalised spec, every problem and warning, the price per hour; creates nothing."""
    async def go() -> int:
        spec = apply_overrides(load_job_file(file), set_ or [])  # a bad file is told before connecting
        async with connect(nats_url) as client:
            plan = await client.plan(spec)
        if as_json:
            print_json(plan)
        else:
            show_plan(plan)
        return 0 if plan["valid"] else 1

    run(go)


@job_app.command("new-version")
def job_new_version(
    name: str,
    set_: Annotated[list[str] | None, typer.Option("--set", help="change a field: key.path=value")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="create without showing the plan and asking")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="show status and logs until the job ends")] = False,
    nats_url: NatsOpt = None,
) -> None:
    """The next version of job NAME: the latest version's parameters with the --set changes."""
    async def go() -> int:
        overrides = parse_overrides(set_ or [])  # a bad --set is told before connecting
        async with connect(nats_url) as client:
            if not yes and not confirm_plan(await client.new_version(name, overrides, dry_run=True), yes):
                return 1
            return await report_created(client, await client.new_version(name, overrides), follow)

    run(go)


@job_app.command("list")
def job_list(
    status_: Annotated[str | None, typer.Option("--status", help="only jobs in this status")] = None,
    name: Annotated[str | None, typer.Option(help="only jobs of this name")] = None,
    limit: int = 50,
    offset: int = 0,
    as_json: JsonOpt = False,
    nats_url: NatsOpt = None,
) -> None:
    """Jobs, newest first."""
    async def go(client: Client) -> None:
        page = await client.list(status_, name, limit, offset)
        if as_json:
            print_json(page)
        else:
            job_table(page["jobs"], page["total"])

    run_with_client(nats_url, go)


@job_app.command("show")
def job_show(job_id: str, as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """Everything about one job: spec, status history, placements, failure reason."""
    async def go(client: Client) -> None:
        job = await client.get(job_id)
        if as_json:
            print_json(job)
        else:
            job_details(job)

    run_with_client(nats_url, go)


@job_app.command("logs")
def job_logs(job_id: str, follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
             nats_url: NatsOpt = None) -> None:
    """The job's log lines (every node); --follow waits for new ones until the job ends."""
    async def go(client: Client) -> None:
        async for node, line in client.logs(job_id, follow=follow):  # an unknown id: not_found
            sys.stdout.write(f"node {node} | {line}\n")
            sys.stdout.flush()

    run_with_client(nats_url, go)


@job_app.command("stop")
def job_stop(job_id: str, reason: str = "stopped by user", nats_url: NatsOpt = None) -> None:
    """Stop a job: every node gets SIGTERM, then SIGKILL after the grace period."""
    async def go(client: Client) -> None:
        job = await client.stop(job_id, reason)
        console.print(f"{job['id']} {job['name']} {job['version']}: {status(job['status'])}")

    run_with_client(nats_url, go)


@job_app.command("watch")
def job_watch(job_id: str, nats_url: NatsOpt = None) -> None:
    """Follow a job's events and logs until it ends."""
    async def go(client: Client) -> int:
        return exit_code(await follow_job(client, job_id))

    run_with_client(nats_url, go)


# ----------------------------------------------------------------------------------- agents
@agent_app.command("list")
def agent_list(nats_url: NatsOpt = None) -> None:
    """Agents that sent a heartbeat: pool, CPUs, memory, GPUs, what they run."""
    async def go(client: Client) -> None:
        agents = await client.agents()
        for a in agents:
            gpus = ", ".join(g["model"] for g in a["gpus"]) or "no GPU"
            console.print(f"{a['agent_id']} on {a['host']}: pool {a['pool']}, {a['cpus']} CPUs, "
                          f"{a['memory_mb']} MiB, {gpus}; running {len(a['running'])}")
        if not agents:
            console.print("no agents")

    run_with_client(nats_url, go)


@app.command()
def schema(
    out: Annotated[Path, typer.Option(help="folder for the JSON Schema files")] = REPO_ROOT / "docs" / "schemas",
) -> None:
    """Write the JSON Schema of every public message type (generated from the msgspec types)."""
    from trainmaster.schemas import write_schemas

    for path in write_schemas(out):
        console.print(f"wrote {path}")

