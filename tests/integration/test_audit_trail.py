"""The audit trail against real processes (nats-server, job-intake, validator): what job-intake
does is appended to TM_AUDIT with who did it, ``tm.audit.list`` reads it back per project, a
retried request is one entry, and the stream refuses deletes and purges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import APIError
from support import Services, assert_error, call, eventually, iris_job, unique
from typer.testing import CliRunner

from trainmaster.topology import Topology

pytestmark = pytest.mark.integration
TOPO = Topology()


@pytest.fixture(scope="module")
def stack(module_nats_server: str, module_services: Services) -> str:
    """job-intake and the validator (no scheduler: valid jobs stay Pending)."""
    module_services.start(module_nats_server, "job_intake", "validator")
    return module_nats_server


@pytest.fixture
async def nc(stack: str) -> AsyncIterator[NATS]:
    client = await nats.connect(stack, connect_timeout=5)
    try:
        yield client
    finally:
        await client.close()




async def trail(nc: NATS, **query) -> list[dict]:
    return (await call(nc, TOPO.audit_list, query))["entries"]


async def test_actions_are_listed_in_order_per_project_once_each(nc, tmp_path):
    project = unique("team.ml")  # a dotted account: its entries are still its own
    credit = await call(nc, TOPO.accounts("credit"), {"name": project, "amount": 50, "credit_id": "first"})
    assert credit["balance"] == 50
    spec = iris_job(tmp_path, unique("audited"), account=project)
    request = {"Nats-Msg-Id": unique("req")}
    job = await call(nc, TOPO.jobs("create"), spec, headers=request)
    again = await call(nc, TOPO.jobs("create"), spec, headers=request)  # the client's retry
    assert again["id"] == job["id"]
    await call(nc, TOPO.jobs("stop"), {"id": job["id"], "reason": "enough"})
    refused = await call(nc, TOPO.accounts("credit"), {"name": project, "amount": -1})
    assert_error(refused, "invalid_request", "amount")

    async def all_four() -> list[dict] | None:
        entries = await trail(nc, project=project)
        return entries if len(entries) >= 4 else None

    entries = await eventually(all_four, what="four audit entries")
    assert [(e["action"], e.get("outcome", "done")) for e in entries] == [
        ("account_credit", "done"), ("job_create", "done"), ("job_stop", "done"), ("account_credit", "refused")]
    assert {e["actor"] for e in entries} == {"cluster-admin"}
    assert {e["project"] for e in entries} == {project}
    assert entries[1]["target"] == entries[2]["target"] == job["id"]
    assert entries[0]["detail"]["amount"] == 50
    assert entries[3]["reason"]
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)

    # another project's entries are not this one's; without a project, both are there
    other = unique("other")
    await call(nc, TOPO.accounts("credit"), {"name": other, "amount": 1})
    assert [e["target"] for e in await trail(nc, project=other)] == [other]
    everything = await trail(nc, limit=1000)
    assert {project, other} <= {e["project"] for e in everything}
    assert (await trail(nc, project=project, limit=2))[-1]["action"] == "account_credit"  # the newest, last


async def test_a_template_delete_and_bad_queries(nc, tmp_path):
    missing = unique("tpl")
    assert_error(await call(nc, TOPO.templates("delete"), {"name": missing}), "not_found", "name")
    entries = await eventually(
        lambda: _targets(nc, missing), what="the refused template delete")
    assert entries[0]["project"] == "@cluster" and entries[0]["outcome"] == "refused"
    assert_error(await call(nc, TOPO.audit_list, {"limit": 1001}), "invalid_request", "limit")
    assert_error(await call(nc, TOPO.audit_list, {"project": "no spaces"}), "invalid_request", "project")
    assert_error(await call(nc, TOPO.audit_list, {"bogus": 1}), "invalid_request")


async def _targets(nc: NATS, target: str) -> list[dict] | None:
    found = [e for e in await trail(nc, project="@cluster", limit=1000) if e["target"] == target]
    return found or None


async def test_the_stream_refuses_deletes_and_purges(nc):
    js = nc.jetstream()
    info = await js.stream_info(TOPO.stream_audit.name)
    assert info.config.deny_delete and info.config.deny_purge
    with pytest.raises(APIError):
        await js.purge_stream(TOPO.stream_audit.name)


async def test_cli_audit(nc, stack, tmp_path):
    from trainmaster.cli.main import app

    project = unique("cli")
    await call(nc, TOPO.accounts("credit"), {"name": project, "amount": 3})
    env = {"TM_NATS_URL": stack}

    def cli(args: list[str]):
        return CliRunner().invoke(app, args, env=env)

    async def shown() -> str | None:
        result = await asyncio.to_thread(cli, ["audit", "--project", project])
        return result.output if result.exit_code == 0 and "account_c" in result.output else None

    out = await eventually(shown, what="the CLI's audit table")
    assert "cluster-ad" in out and "done" in out  # an 80-column table: long cells are cut short
    as_json = await asyncio.to_thread(cli, ["audit", "--project", project, "--json"])
    assert as_json.exit_code == 0 and '"action": "account_credit"' in as_json.output
    bad = await asyncio.to_thread(cli, ["audit", "--limit", "5000"])
    assert bad.exit_code != 0 and "limit" in bad.output, bad.output
