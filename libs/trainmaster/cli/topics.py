"""``trainmaster topic ...``: notification topics, their subscriptions and deliveries."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from trainmaster.cli.render import console, err_console, ts

topic_app = typer.Typer(no_args_is_help=True, help="notification topics: webhooks (signed) and email subscriptions")

NatsOpt = Annotated[str | None, typer.Option("--nats-url", envvar="TM_NATS_URL", help="NATS server URL")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the reply as JSON")]


def _go(nats_url: str | None, fn: Any) -> None:
    """Run ``fn(topics_client)`` with the CLI's usual error handling."""
    from trainmaster.cli.main import _client, _run

    async def go() -> None:
        async with _client(nats_url) as client:
            await fn(client.topics)

    _run(go)


def _json(value: Any) -> None:
    print(json.dumps(value, indent=2))


@topic_app.command("create")
def create(name: str, description: Annotated[str, typer.Option(help="what the topic is for")] = "",
           nats_url: NatsOpt = None) -> None:
    """Create a topic (1-64 letters, digits, '-' and '_')."""
    async def fn(topics: Any) -> None:
        topic = await topics.create(name, description)
        console.print(f"created topic {topic['name']}")

    _go(nats_url, fn)


@topic_app.command("list")
def list_(as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """Every topic with its number of subscriptions."""
    async def fn(topics: Any) -> None:
        items = await topics.list()
        if as_json:
            return _json(items)
        table = Table(title=f"{len(items)} topic(s)")
        for col in ("NAME", "SUBSCRIPTIONS", "ACTIVE", "CREATED", "DESCRIPTION"):
            table.add_column(col)
        for t in items:
            table.add_row(t["name"], str(t["subscriptions"]), str(t["active_subscriptions"]), ts(t["created_at"]),
                          t["description"])
        console.print(table)

    _go(nats_url, fn)


@topic_app.command("delete")
def delete(name: str, force: Annotated[bool, typer.Option(help="also remove its subscriptions")] = False,
           nats_url: NatsOpt = None) -> None:
    """Delete a topic; one with subscriptions only with --force (which removes them too)."""
    async def fn(topics: Any) -> None:
        out = await topics.delete(name, force)
        console.print(f"deleted topic {out['deleted']} ({out['subscriptions_removed']} subscription(s) removed)")

    _go(nats_url, fn)


@topic_app.command("subscribe")
def subscribe(
    name: str,
    webhook: Annotated[str | None, typer.Option(help="an http(s) URL to POST signed CloudEvents to")] = None,
    email: Annotated[str | None, typer.Option(help="an email address")] = None,
    secret: Annotated[str | None, typer.Option(help="the webhook's signing secret (whsec_...); "
                                               "generated when omitted")] = None,
    as_json: JsonOpt = False,
    nats_url: NatsOpt = None,
) -> None:
    """Subscribe a webhook or an email address to a topic.  A webhook's secret is shown once."""
    if (webhook is None) == (email is None):
        err_console.print("[red]error[/red]: give exactly one of --webhook URL or --email ADDRESS")
        raise typer.Exit(2)

    async def fn(topics: Any) -> None:
        sub = await topics.subscribe(name, "webhook" if webhook else "email", webhook or email, secret)
        if as_json:
            return _json(sub)
        console.print(f"subscribed {sub['protocol']} {sub['endpoint']} to {name}: {sub['id']}")
        if sub.get("secret"):
            console.print(f"signing secret (shown only now): {sub['secret']}")

    _go(nats_url, fn)


@topic_app.command("subscriptions")
def subscriptions(name: str, as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """The subscriptions of a topic and their state (active, or disabled with the reason)."""
    async def fn(topics: Any) -> None:
        subs = await topics.subscriptions(name)
        if as_json:
            return _json(subs)
        table = Table(title=f"{len(subs)} subscription(s) of {name}")
        for col in ("ID", "PROTOCOL", "ENDPOINT", "STATE", "CREATED", "DISABLED BECAUSE"):
            table.add_column(col)
        for s in subs:
            table.add_row(s["id"], s["protocol"], s["endpoint"], s["state"], ts(s["created_at"]),
                          s.get("disabled_reason") or "")
        console.print(table)

    _go(nats_url, fn)


@topic_app.command("unsubscribe")
def unsubscribe(name: str, subscription_id: str, nats_url: NatsOpt = None) -> None:
    """Remove a subscription (its pending deliveries are dropped)."""
    async def fn(topics: Any) -> None:
        await topics.unsubscribe(name, subscription_id)
        console.print(f"removed {subscription_id} from {name}")

    _go(nats_url, fn)


@topic_app.command("deliveries")
def deliveries(name: str, dead: Annotated[bool, typer.Option(help="only dead letters")] = False,
               limit: int = 100, as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """The newest deliveries of a topic: state, attempts, last answer or error."""
    async def fn(topics: Any) -> None:
        page = await topics.deliveries(name, dead, limit)
        if as_json:
            return _json(page)
        what = "dead letter(s)" if dead else "delivery(ies)"
        table = Table(title=f"{len(page['deliveries'])} of {page['total']} {what} of {name}")
        for col in ("WEBHOOK-ID", "SUBSCRIPTION", "EVENT", "STATE", "ATTEMPTS", "LAST", "UPDATED"):
            table.add_column(col)
        for d in page["deliveries"]:
            last = d.get("last_error") or (str(d["last_status"]) if d.get("last_status") is not None else "")
            table.add_row(d["id"], d["subscription_id"], f"{d['notification']} {d['event_id']}", d["state"],
                          str(d["attempts"]), last, ts(d["updated_at"]))
        console.print(table)

    _go(nats_url, fn)
