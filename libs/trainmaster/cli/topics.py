"""``trainmaster topic ...``: notification topics, their subscriptions and deliveries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer

from trainmaster.cli.common import JsonOpt, NatsOpt, print_json, run_with_client
from trainmaster.cli.render import console, err_console, print_table, ts
from trainmaster.client import TopicsClient

topic_app = typer.Typer(no_args_is_help=True, help="notification topics: webhooks (signed) and email subscriptions")


def _with_topics(nats_url: str | None, fn: Callable[[TopicsClient], Awaitable[None]]) -> None:
    run_with_client(nats_url, lambda client: fn(client.topics))


@topic_app.command("create")
def create(name: str, description: Annotated[str, typer.Option(help="what the topic is for")] = "",
           project: Annotated[str, typer.Option(help="the project (job account) it belongs to: its members "
                                                     "manage it, only its jobs may name it")] = "default",
           nats_url: NatsOpt = None) -> None:
    """Create a topic (1-64 letters, digits, '-' and '_') of a project."""
    async def fn(topics: TopicsClient) -> None:
        topic = await topics.create(name, description, project)
        console.print(f"created topic {topic['name']} of project {topic.get('project', project)}")

    _with_topics(nats_url, fn)


@topic_app.command("list")
def list_(as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """Every topic of your projects with its number of subscriptions."""
    async def fn(topics: TopicsClient) -> None:
        items = await topics.list()
        if as_json:
            return print_json(items)
        print_table(f"{len(items)} topic(s)",
                    ("NAME", "PROJECT", "SUBSCRIPTIONS", "ACTIVE", "CREATED", "DESCRIPTION"),
                    [(t["name"], t.get("project", "default"), str(t["subscriptions"]), str(t["active_subscriptions"]),
                      ts(t["created_at"]), t["description"]) for t in items])

    _with_topics(nats_url, fn)


@topic_app.command("delete")
def delete(name: str, force: Annotated[bool, typer.Option(help="also remove its subscriptions")] = False,
           nats_url: NatsOpt = None) -> None:
    """Delete a topic; one with subscriptions only with --force (which removes them too)."""
    async def fn(topics: TopicsClient) -> None:
        out = await topics.delete(name, force)
        console.print(f"deleted topic {out['deleted']} ({out['subscriptions_removed']} subscription(s) removed)")

    _with_topics(nats_url, fn)


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

    async def fn(topics: TopicsClient) -> None:
        sub = await topics.subscribe(name, "webhook" if webhook else "email", webhook or email, secret)
        if as_json:
            return print_json(sub)
        console.print(f"subscribed {sub['protocol']} {sub['endpoint']} to {name}: {sub['id']}")
        if sub.get("secret"):
            console.print(f"signing secret (shown only now): {sub['secret']}")

    _with_topics(nats_url, fn)


@topic_app.command("subscriptions")
def subscriptions(name: str, as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """The subscriptions of a topic and their state (active, or disabled with the reason)."""
    async def fn(topics: TopicsClient) -> None:
        subs = await topics.subscriptions(name)
        if as_json:
            return print_json(subs)
        print_table(f"{len(subs)} subscription(s) of {name}",
                    ("ID", "PROTOCOL", "ENDPOINT", "STATE", "CREATED", "DISABLED BECAUSE"),
                    [(s["id"], s["protocol"], s["endpoint"], s["state"], ts(s["created_at"]),
                      s.get("disabled_reason") or "") for s in subs])

    _with_topics(nats_url, fn)


@topic_app.command("unsubscribe")
def unsubscribe(name: str, subscription_id: str, nats_url: NatsOpt = None) -> None:
    """Remove a subscription (its pending deliveries are dropped)."""
    async def fn(topics: TopicsClient) -> None:
        await topics.unsubscribe(name, subscription_id)
        console.print(f"removed {subscription_id} from {name}")

    _with_topics(nats_url, fn)


@topic_app.command("deliveries")
def deliveries(name: str, dead: Annotated[bool, typer.Option(help="only dead letters")] = False,
               limit: int = 100, as_json: JsonOpt = False, nats_url: NatsOpt = None) -> None:
    """The newest deliveries of a topic: state, attempts, last answer or error."""
    async def fn(topics: TopicsClient) -> None:
        page = await topics.deliveries(name, dead, limit)
        if as_json:
            return print_json(page)
        what = "dead letter(s)" if dead else "delivery(ies)"
        print_table(f"{len(page['deliveries'])} of {page['total']} {what} of {name}",
                    ("WEBHOOK-ID", "SUBSCRIPTION", "EVENT", "STATE", "ATTEMPTS", "LAST", "UPDATED"),
                    [(d["id"], d["subscription_id"], f"{d['notification']} {d['event_id']}", d["state"],
                      str(d["attempts"]), _last_answer(d), ts(d["updated_at"])) for d in page["deliveries"]])

    _with_topics(nats_url, fn)


def _last_answer(delivery: dict[str, Any]) -> str:
    if delivery.get("last_error"):
        return delivery["last_error"]
    return str(delivery["last_status"]) if delivery.get("last_status") is not None else ""
