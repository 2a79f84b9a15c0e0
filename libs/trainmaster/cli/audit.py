"""``trainmaster audit``: who did what, read from the audit stream through ``tm.audit.list``."""

from __future__ import annotations

from typing import Annotated

import typer

from trainmaster.cli.common import JsonOpt, NatsOpt, print_json, run_with_client
from trainmaster.cli.render import print_table, ts
from trainmaster.client import Client


def audit_cmd(
    project: Annotated[str | None, typer.Option("--project", "-p", help="one account's entries ('@cluster': "
                                                "templates, datasets, topics, agents)")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="the newest N entries (at most 1000)")] = 100,
    as_json: JsonOpt = False,
    nats_url: NatsOpt = None,
) -> None:
    """The audit trail, oldest first: when, who, what, on what, and whether it was refused."""

    async def go(client: Client) -> None:
        entries = await client.audit(project=project, limit=limit)
        if as_json:
            return print_json(entries)
        print_table("audit", ["at", "actor", "project", "action", "target", "outcome"], [
            (ts(e["at"]), e["actor"], e["project"], e["action"], e["target"],
             e.get("outcome", "done") + (f": {e['reason']}" if e.get("reason") else ""))
            for e in entries
        ])
        return None

    run_with_client(nats_url, go)
