"""Issue 3 against real processes (nats-server, job-intake, validator, moto's S3 server): the plan,
new versions, templates, datasets (local and s3), accounts, arrears and charge-once billing,
object-storage rules (region R6, long names R7), and the CLI's confirmation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from s3server import ACCESS_KEY, SECRET_KEY, S3Server
from support import Services, assert_error, call, eventually, iris_job, settled, unique
from typer.testing import CliRunner

from trainmaster.bus import make_broker
from trainmaster.jobstore import JobStore
from trainmaster.messages import Account, NodeExited, NodeRunning, Placed, Placement
from trainmaster.settings import Settings
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration
TOPO = Topology()


@pytest.fixture(scope="module")
def stack(module_nats_server: str, module_services: Services, s3_server: S3Server) -> str:
    """job-intake and the validator, both reaching moto (no scheduler: valid jobs stay Pending)."""
    module_services.start(module_nats_server, "job_intake", "validator", env=s3_server.env())
    return module_nats_server


@pytest.fixture(scope="module")
def s3(s3_server: S3Server):
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    return client


@pytest.fixture
async def nc(stack: str) -> AsyncIterator[NATS]:
    client = await nats.connect(stack, connect_timeout=5)
    try:
        yield client
    finally:
        await client.close()




def put_file(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def bucket(s3, name: str, region: str = "us-east-1", files: dict[str, bytes] | None = None) -> str:
    if region == "us-east-1":
        s3.create_bucket(Bucket=name)
    else:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    for key, body in (files or {}).items():
        s3.put_object(Bucket=name, Key=key, Body=body)
    return name


# ------------------------------------------------------------------------------ plan (R22)
async def test_plan_shows_the_normalised_spec_warnings_and_price_and_creates_nothing(nc, tmp_path):
    name = unique("plan")
    spec = iris_job(tmp_path, name, resources={"pool": "cpu", "flavor": "cpu.large", "node_count": 2},
                    parameters={"max_iter": 50})
    put_file(Path(spec["output_path"]) / "old-model.bin")
    plan = await call(nc, TOPO.jobs("plan"), spec)
    assert plan["valid"] is True and plan["violations"] == []
    assert [w["code"] for w in plan["warnings"]] == ["output_not_empty"]
    assert plan["price_per_hour"] == pytest.approx(0.8) and plan["flavor"] == "cpu.large"
    assert plan["spec"]["parameters"] == {"max_iter": "50"} and plan["next_version"] == "V001"
    assert plan["account_balance"] is not None
    listed = await call(nc, TOPO.jobs("list"), {"name": name})
    assert listed["total"] == 0  # a plan creates nothing

    bad = dict(spec, resources={"pool": "gpu", "flavor": "cpu.small", "node_count": 99}, billing_mode="yearly",
               algorithm=dict(spec["algorithm"], engine="caffe", engine_version="1.0"))
    plan = await call(nc, TOPO.jobs("plan"), bad)
    assert plan["valid"] is False
    assert {(v["field"], v["code"]) for v in plan["violations"]} >= {
        ("billing_mode", "unsupported_billing_mode"), ("resources.flavor", "unknown_flavor"),
        ("resources.node_count", "pool_too_small"), ("resources.node_count", "engine_single_node")}
    assert plan["price_per_hour"] is None
    unnamed = await call(nc, TOPO.jobs("plan"), dict(spec, name="bad name!", output_path=None))
    assert unnamed["valid"] is False and unnamed["next_version"] is None  # every violation at once, the name's too
    found = {(v["field"], v["code"]) for v in unnamed["violations"]}
    assert {("name", "invalid_name"), ("output_path", "required")} <= found, found
    assert_error(await call(nc, TOPO.jobs("plan"), {"name": "x", "nope": 1}), "invalid_request", "nope")


# ------------------------------------------------------------------------------ new versions (R8)
async def test_new_version_takes_the_latest_spec_with_overrides(nc, tmp_path):
    name = unique("nv")
    first = await call(nc, TOPO.jobs("create"), iris_job(tmp_path, name))
    assert first["version"] == "V001"
    dry = await call(nc, TOPO.jobs("new_version"), {"name": name, "overrides": {"parameters.max_iter": 7},
                                                    "dry_run": True})
    assert dry["valid"] and dry["next_version"] == "V002" and dry["spec"]["parameters"]["max_iter"] == "7"
    second = await call(nc, TOPO.jobs("new_version"), {"name": name, "overrides": {"parameters.max_iter": 7}},
                        headers={"Nats-Msg-Id": f"nv-{name}"})
    assert second["version"] == "V002" and second["status"] == "Pending", second
    again = await call(nc, TOPO.jobs("new_version"), {"name": name, "overrides": {"parameters.max_iter": 7}},
                       headers={"Nats-Msg-Id": f"nv-{name}"})
    assert again["id"] == second["id"]  # a retried request creates no third version
    record = await call(nc, TOPO.jobs("get"), {"id": second["id"]})
    assert record["spec"]["parameters"] == {"max_iter": "7", "C": "1.0"}
    third = await call(nc, TOPO.jobs("new_version"), {"name": name, "overrides": {"description": "third"}})
    assert third["version"] == "V003"
    assert (await call(nc, TOPO.jobs("get"), {"id": third["id"]}))["spec"]["parameters"]["max_iter"] == "7"

    assert_error(await call(nc, TOPO.jobs("new_version"), {"name": unique("none")}), "not_found", "name")
    assert_error(await call(nc, TOPO.jobs("new_version"), {"name": name, "overrides": {"name": "other"}}),
                 "invalid_request", "overrides.name")
    bad = await call(nc, TOPO.jobs("new_version"), {"name": name, "overrides": {"resources.node_count": "x"}})
    assert_error(bad, "invalid_request", "resources.node_count")
    invalid = await call(nc, TOPO.jobs("new_version"), {"name": name, "overrides": {"resources.pool": "tpu"}})
    assert_error(invalid, "validation_failed", "resources.pool", "unknown_pool")


# ------------------------------------------------------------------------------ templates (R9, R21)
async def test_save_as_stores_a_template_that_can_be_managed_and_used(nc, tmp_path):
    name, tname = unique("tpl-job"), unique("tpl")
    spec = iris_job(tmp_path, name, save_as={"name": tname, "description": "iris, tuned"})
    created = await call(nc, TOPO.jobs("create"), spec)
    template = await call(nc, TOPO.templates("get"), {"name": tname})
    assert template["description"] == "iris, tuned" and template["source_job"] == created["id"]
    assert template["spec"]["name"] == name and template["spec"]["save_as"] is None
    names = [t["name"] for t in (await call(nc, TOPO.templates("list"), {}))["templates"]]
    assert tname in names

    updated = await call(nc, TOPO.templates("update"), {"name": tname, "description": "v2",
                                                        "overrides": {"parameters.C": 0.5}})
    assert updated["description"] == "v2" and updated["spec"]["parameters"]["C"] == "0.5"
    assert_error(await call(nc, TOPO.templates("update"), {"name": tname, "overrides": {"resources.pool": 3}}),
                 "invalid_request", "resources.pool")

    # one step from the CLI: template + overrides, no prompt
    result = await asyncio.to_thread(cli, ["job", "create", "--template", tname, "--set", f"name={name}-b",
                                           "--set", "parameters.max_iter=9", "--yes"])
    assert result.exit_code == 0, result.output
    jobs = (await call(nc, TOPO.jobs("list"), {"name": f"{name}-b"}))["jobs"]
    job = await call(nc, TOPO.jobs("get"), {"id": jobs[0]["id"]})
    assert job["spec"]["parameters"] == {"max_iter": "9", "C": "0.5"}

    assert (await call(nc, TOPO.templates("delete"), {"name": tname})) == {"deleted": tname}
    assert_error(await call(nc, TOPO.templates("get"), {"name": tname}), "not_found", "name")
    assert_error(await call(nc, TOPO.templates("delete"), {"name": tname}), "not_found", "name")


async def test_a_job_spec_is_saved_as_a_template_without_a_new_job(nc, tmp_path):
    name, tname = unique("saved-job"), unique("saved")
    created = await call(nc, TOPO.jobs("create"), iris_job(tmp_path, name))
    spec = (await call(nc, TOPO.jobs("get"), {"id": created["id"]}))["spec"]
    saved = await call(nc, TOPO.templates("save"), {"name": tname, "description": "from its page", "spec": spec})
    assert saved["name"] == tname and saved["description"] == "from its page" and saved["spec"]["name"] == name
    assert (await call(nc, TOPO.templates("get"), {"name": tname}))["spec"] == saved["spec"]
    assert len((await call(nc, TOPO.jobs("list"), {"name": name}))["jobs"]) == 1  # no job was made

    again = await call(nc, TOPO.templates("save"), {"name": tname, "spec": {**spec, "description": "changed"}})
    assert again["spec"]["description"] == "changed" and again["created_at"] == saved["created_at"]
    assert_error(await call(nc, TOPO.templates("save"), {"name": "bad name!", "spec": spec}), "invalid_request", "name")
    assert_error(await call(nc, TOPO.templates("save"), {"name": tname}), "invalid_request", "spec")


def cli(args: list[str], stdin: str | None = None, url: str | None = None):
    from trainmaster.cli.main import app

    return CliRunner().invoke(app, args, input=stdin, env={"TM_NATS_URL": url or STACK_URL[0]})


STACK_URL: list[str] = []


@pytest.fixture(autouse=True)
def _remember_url(stack: str) -> None:
    STACK_URL[:] = [stack]


async def test_cli_create_shows_the_plan_and_asks(nc, tmp_path):
    name = unique("ask")
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(iris_job(tmp_path, name)))
    said_no = await asyncio.to_thread(cli, ["job", "create", "-f", str(job_file)], "n\n")
    assert said_no.exit_code == 1 and "price: 0.05 USD per hour" in said_no.output, said_no.output
    assert "create this job?" in said_no.output
    assert (await call(nc, TOPO.jobs("list"), {"name": name}))["total"] == 0
    said_yes = await asyncio.to_thread(cli, ["job", "create", "-f", str(job_file)], "y\n")
    assert said_yes.exit_code == 0 and f"created {name} V001" in said_yes.output, said_yes.output
    invalid = await asyncio.to_thread(cli, ["job", "create", "-f", str(job_file), "--set", "resources.pool=tpu"])
    assert invalid.exit_code == 1 and "unknown_pool" in invalid.output
    version = await asyncio.to_thread(cli, ["job", "new-version", name, "--set", "parameters.C=2", "--yes"])
    assert version.exit_code == 0 and f"created {name} V002" in version.output, version.output


# ------------------------------------------------------------------------------ datasets (R10)
async def test_local_dataset_versions_are_immutable_manifests(nc, tmp_path):
    name = unique("ds")
    folder = tmp_path / name
    (folder / "sub").mkdir(parents=True)
    (folder / "a.csv").write_text("x,y\n1,2\n")
    (folder / "sub" / "b.csv").write_text("x,y\n3,4\n")
    created = await call(nc, TOPO.datasets("create"), {"name": name, "location": str(folder)})
    assert created["location"] == str(folder) and created["versions"] == []
    assert_error(await call(nc, TOPO.datasets("create"), {"name": name, "location": str(folder)}), "conflict")
    assert_error(await call(nc, TOPO.datasets("create"), {"name": unique("ds"), "location": "rel/dir"}),
                 "invalid_request", "location", "invalid_location")
    v1 = await call(nc, TOPO.datasets("publish"), {"name": name, "description": "first"})
    assert v1["version"] == "V001" and [f[0] for f in v1["files"]] == ["a.csv", "sub/b.csv"]
    assert v1["files"][0][2] == "ca1d4a4f6a4f0e7cc0b8ac2bbd3a3d3e" or len(v1["files"][0][2]) == 32  # an MD5
    (folder / "c.csv").write_text("x,y\n5,6\n")
    v2 = await call(nc, TOPO.datasets("publish"), {"name": name})
    assert v2["version"] == "V002" and len(v2["files"]) == 3
    again = await call(nc, TOPO.datasets("version"), {"name": name, "version": "V001"})
    assert len(again["files"]) == 2  # the folder changed; the version did not
    shown = await call(nc, TOPO.datasets("get"), {"name": name})
    assert [(v["version"], v["files"]) for v in shown["versions"]] == [("V001", 2), ("V002", 3)]
    assert name in [d["name"] for d in (await call(nc, TOPO.datasets("list"), {}))["datasets"]]

    job = iris_job(tmp_path, unique("ds-job"), data=[{"dataset": name, "version": "V001"}])
    assert (await call(nc, TOPO.jobs("create"), job))["status"] == "Pending"
    bad = iris_job(tmp_path, unique("ds-job"), data=[{"dataset": name, "version": "V007"},
                                                      {"dataset": unique("none"), "version": "V001"}],
                   output_path=str(folder / "model"))
    error = assert_error(await call(nc, TOPO.jobs("create"), bad), "validation_failed")
    assert {(d["field"], d["code"]) for d in error["details"]} == {
        ("data[0].version", "dataset_version_not_found"), ("data[1].dataset", "dataset_not_found"),
        ("output_path", "output_overlaps_data")}


async def test_s3_data_region_and_long_names(nc, tmp_path, s3):
    long = "n" * 300
    ok = bucket(s3, unique("data"), files={"iris/a.csv": b"x,y\n1,2\n", f"iris/{long}.csv": b"x,y\n",
                                           "out/old.bin": b"1"})
    far = bucket(s3, unique("far"), "eu-west-1", files={"iris/a.csv": b"x,y\n"})
    only_long = bucket(s3, unique("long"), files={f"iris/{long}": b"x"})
    spec = iris_job(tmp_path, unique("s3job"), data=[{"path": f"s3://{ok}/iris"}], output_path=f"s3://{ok}/out")
    plan = await call(nc, TOPO.jobs("plan"), spec)
    assert plan["valid"], plan["violations"]
    assert {(w["field"], w["code"]) for w in plan["warnings"]} == {
        ("data[0].path", "long_file_names_skipped"), ("output_path", "output_not_empty")}
    assert "1 of 2 file(s)" in plan["warnings"][0]["message"] + plan["warnings"][1]["message"]

    bad = iris_job(tmp_path, unique("s3job"), data=[{"path": f"s3://{far}/iris"}, {"path": f"s3://{only_long}/iris"},
                                                     {"path": f"s3://{ok}/missing"},
                                                     {"path": f"s3://{unique('nobucket')}/x"}],
                   output_path=f"s3://{far}/iris/model")
    error = assert_error(await call(nc, TOPO.jobs("create"), bad), "validation_failed")
    got = {(d["field"], d["code"]) for d in error["details"]}
    assert {("data[0].path", "storage_region_mismatch"), ("data[2].path", "data_path_not_found"),
            ("data[3].path", "data_path_not_found"), ("output_path", "output_overlaps_data")} <= got, got
    alone = iris_job(tmp_path, unique("s3job"), data=[{"path": f"s3://{only_long}/iris"}])
    error = assert_error(await call(nc, TOPO.jobs("create"), alone), "validation_failed", "data",
                         "no_usable_data_files")

    # an s3 dataset: its manifest carries the ETags
    name = unique("s3ds")
    await call(nc, TOPO.datasets("create"), {"name": name, "location": f"s3://{ok}/iris"})
    v1 = await call(nc, TOPO.datasets("publish"), {"name": name})
    assert sorted(f[0] for f in v1["files"]) == ["a.csv", f"{long}.csv"] and all(f[2] for f in v1["files"])


# ------------------------------------------------------------------------------ accounts, arrears, billing
async def test_accounts_credit_and_arrears(nc, tmp_path, stack):
    accounts = (await call(nc, TOPO.accounts("list"), {}))["accounts"]
    assert "default" in [a["name"] for a in accounts]
    name = unique("acct")
    first = await call(nc, TOPO.accounts("credit"), {"name": name, "amount": 5, "credit_id": "c1"})
    again = await call(nc, TOPO.accounts("credit"), {"name": name, "amount": 5, "credit_id": "c1"})
    assert first["balance"] == again["balance"] == 5  # the same credit id counts once
    assert_error(await call(nc, TOPO.accounts("credit"), {"name": name, "amount": -1}), "invalid_request", "amount")
    assert_error(await call(nc, TOPO.accounts("get"), {"name": unique("none")}), "not_found")

    broke = unique("broke")
    js = nc.jetstream()
    kv = await js.key_value(TOPO.bucket_accounts.name)
    now = time.time()
    await kv.create(broke, msgspec.json.encode(Account(broke, -3.5, "USD", now, now)))
    refused = await call(nc, TOPO.jobs("create"), iris_job(tmp_path, unique("arrears"), account=broke))
    error = assert_error(refused, "validation_failed", "account", "account_in_arrears")
    assert "arrears" in error["details"][0]["message"]
    unknown = await call(nc, TOPO.jobs("create"), iris_job(tmp_path, unique("arrears"), account=unique("ghost")))
    assert_error(unknown, "validation_failed", "account", "unknown_account")
    await call(nc, TOPO.accounts("credit"), {"name": broke, "amount": 10})
    assert (await call(nc, TOPO.jobs("create"), iris_job(tmp_path, unique("paid"), account=broke)))["status"] \
        == "Pending"


async def test_an_ended_job_is_charged_exactly_once(nc, tmp_path, stack):
    account = unique("billme")
    await call(nc, TOPO.accounts("credit"), {"name": account, "amount": 100})
    spec = iris_job(tmp_path, unique("billed"), account=account,
                    resources={"pool": "gpu", "flavor": "gpu.h100x8", "node_count": 1})
    job = await call(nc, TOPO.jobs("create"), spec)
    assert job["status"] == "Pending", job
    # play the scheduler and the agent: placed, running for a while, exited 0
    broker = make_broker("test-billing", Settings(nats_url=stack))
    await broker.connect()
    try:
        store = await JobStore(broker, TOPO, source="test").open()
        await store.apply(job["id"], Placed(change_id="placed.1", attempt=1,
                                            placements=[Placement(0, "agent-x", "host-x")]))
        await store.apply(job["id"], NodeRunning(change_id="a1.n0.running", attempt=1, node=0))
        await asyncio.sleep(0.6)
        await store.apply(job["id"], NodeExited(change_id="a1.n0.exited", attempt=1, node=0, exit_code=0))
    finally:
        await broker.stop()

    async def billed():
        record = await call(nc, TOPO.jobs("get"), {"id": job["id"]})
        return record if record.get("billing") else None

    record = await eventually(billed, 20, what="the job's billing")
    billing = record["billing"]
    assert billing["account"] == account and billing["price_per_hour"] == 32.0
    assert 0.5 <= billing["duration_s"] < 5 and billing["cost"] == pytest.approx(32 * billing["duration_s"] / 3600,
                                                                                  abs=1e-5)
    assert record["history"][-1]["change"] == "billed" and record["status"] == "Succeeded"
    charged = await call(nc, TOPO.accounts("get"), {"name": account})
    assert charged["balance"] == pytest.approx(100 - billing["cost"], abs=1e-6)

    # the end event delivered again (a redelivery, another biller replica): no second charge
    events = nc.jetstream()
    last = await events.get_last_msg(TOPO.stream_events.name, TOPO.job_events(job["id"]))
    ended = [json.loads(last.data)]
    for _ in range(3):
        ack = await events.publish(TOPO.job_events(job["id"]), json.dumps(ended[0]).encode(),
                                   headers={"Nats-Msg-Id": uuid.uuid4().hex})
    # the biller handled and acked all three copies: a second charge would be in the account now
    await settled(nc, TOPO.consumer_billing.stream, TOPO.consumer_billing.durable, past_seq=ack.seq)
    after = await call(nc, TOPO.accounts("get"), {"name": account})
    assert after["balance"] == charged["balance"]
    assert [e["id"] for e in after["ledger"] if e["kind"] == "charge"] == [f"charge:{job['id']}"]


async def test_an_accounts_quota_is_set_shown_and_removed(nc, tmp_path, stack):
    name = unique("quota")
    assert_error(await call(nc, TOPO.accounts("quota"), {"name": name, "jobs": 1}), "not_found", "name")
    await call(nc, TOPO.accounts("credit"), {"name": name, "amount": 100})
    limited = await call(nc, TOPO.accounts("quota"), {"name": name, "cpus": 200, "gpus": 2})
    assert limited["quota"] == {"cpus": 200.0, "gpus": 2}
    assert limited["in_use"] == {"cpus": 0.0, "gpus": 0, "nodes": 0, "jobs": 0} and limited["balance"] == 100
    # a number sets a limit, null removes it, a limit left out stays
    changed = await call(nc, TOPO.accounts("quota"), {"name": name, "jobs": 1, "gpus": None})
    assert changed["quota"] == {"cpus": 200.0, "jobs": 1}
    assert (await call(nc, TOPO.accounts("get"), {"name": name}))["quota"] == {"cpus": 200.0, "jobs": 1}
    listed = {a["name"]: a for a in (await call(nc, TOPO.accounts("list"), {}))["accounts"]}
    assert listed[name]["quota"] == {"cpus": 200.0, "jobs": 1}

    # what its placed jobs hold, as the quota counts it (play the scheduler: placed on an agent)
    spec = iris_job(tmp_path, unique("held"), account=name,
                    resources={"pool": "gpu", "flavor": "gpu.h100x8", "node_count": 2})
    job = await call(nc, TOPO.jobs("create"), spec)
    assert job["status"] == "Pending", job
    broker = make_broker("test-quota", Settings(nats_url=stack))
    await broker.connect()
    try:
        store = await JobStore(broker, TOPO, source="test").open()
        await store.apply(job["id"], Placed(change_id="placed.1", attempt=1,
                                            placements=[Placement(0, "agent-x", "host-x"),
                                                        Placement(1, "agent-y", "host-y")]))
    finally:
        await broker.stop()

    async def held():
        account = await call(nc, TOPO.accounts("get"), {"name": name})
        return account if account["in_use"]["jobs"] else None

    account = await eventually(held, 10, what="the account's use")
    assert account["in_use"] == {"cpus": 192.0, "gpus": 16, "nodes": 2, "jobs": 1}
    cleared = await call(nc, TOPO.accounts("quota"), {"name": name, "clear": True})
    assert cleared["quota"] is None and cleared["in_use"]["jobs"] == 1

    for body, field, code in [
        ({"name": name}, "$", "nothing_to_change"),
        ({"name": name, "cpus": -1}, "cpus", None),
        ({"name": name, "gpus": 1.5}, "gpus", None),
        ({"name": name, "jobs": "one"}, "jobs", None),
        ({"name": name, "memory": 4}, "memory", None),
        ({"name": "not an account!", "jobs": 1}, "name", None),
    ]:
        assert_error(await call(nc, TOPO.accounts("quota"), body), "invalid_request", field, code)


async def test_cli_account_quota(nc, tmp_path, stack):
    name = unique("cliquota")
    await call(nc, TOPO.accounts("credit"), {"name": name, "amount": 5})
    limited = await asyncio.to_thread(cli, ["account", "quota", name, "--gpus", "4", "--jobs", "2"])
    assert limited.exit_code == 0, limited.output
    assert f"{name}: quota at most 4 GPUs, 2 jobs at once" in limited.output
    assert "in use now: 0 CPUs, 0 GPUs of 4, 0 nodes, 0 jobs of 2" in limited.output
    shown = await asyncio.to_thread(cli, ["account", "show", name])
    assert "quota: at most 4 GPUs, 2 jobs at once" in shown.output and "in use now" in shown.output
    removed = await asyncio.to_thread(cli, ["account", "quota", name, "--jobs", "none"])
    assert "quota at most 4 GPUs at once" in removed.output, removed.output
    cleared = await asyncio.to_thread(cli, ["account", "quota", name, "--clear"])
    assert "quota no quota" in cleared.output, cleared.output
    bad = await asyncio.to_thread(cli, ["account", "quota", name, "--gpus", "lots"])
    assert bad.exit_code == 2 and "--gpus 'lots'" in bad.output
    nothing = await asyncio.to_thread(cli, ["account", "quota", name])
    assert nothing.exit_code == 1 and "nothing_to_change" in nothing.output


def test_job_show_prints_why_a_pending_job_waits():
    from trainmaster.cli.render import console, job_details

    job = {"id": "job-1", "name": "n", "version": "V001", "status": "Pending", "created_at": 1, "updated_at": 2,
           "attempt": 0, "spec": {"algorithm": {"source": "preset", "preset": "torch-mlp"}, "data": [],
                                  "parameters": {}, "resources": {"pool": "gpu", "node_count": 1}, "account": "a"},
           "pending_reason": "held by the quota of account a: at most 1 job at once",
           "history": [{"seq": 0, "at": 1, "change": "submitted", "status": "Initializing"}]}
    with console.capture() as captured:
        job_details(job)
    assert "waiting: held by the quota of account a: at most 1 job at once" in captured.get()
    with console.capture() as captured:
        job_details({**job, "status": "Stopped"})
    assert "waiting:" not in captured.get(), "only a Pending job waits"


def test_job_show_prints_the_cost(tmp_path):
    """`job show` renders billing, placements, warnings (R24) from a record as the API returns it."""
    from trainmaster.cli.render import console, job_details

    job = {"id": "job-1", "name": "n", "version": "V001", "status": "Succeeded", "created_at": 1, "updated_at": 2,
           "attempt": 1, "spec": {"algorithm": {"source": "preset", "preset": "torch-mlp"}, "data": [],
                                  "parameters": {}, "resources": {"pool": "cpu", "node_count": 1}, "account": "a",
                                  "output_path": "/o", "log_path": "/l"},
           "placements": [{"node": 0, "agent_id": "a1", "host": "h"}], "warnings": [
               {"field": "output_path", "code": "output_not_empty", "message": "not empty"}],
           "billing": {"account": "a", "price_per_hour": 0.05, "duration_s": 72.0, "cost": 0.001, "currency": "USD",
                       "billed_at": 3}, "history": [{"seq": 0, "at": 1, "change": "submitted",
                                                     "status": "Initializing"}]}
    with console.capture() as captured:
        job_details(job)
    text = captured.get()
    assert "billed: 72.0 s at 0.05 USD/h = 0.0010 USD to account a" in text
    assert "output_not_empty" in text and "node 0 on agent a1" in text


async def test_a_rejected_request_creates_nothing_at_all(nc, tmp_path):
    name, tname = unique("half"), unique("tpl")
    bad = iris_job(tmp_path, name, save_as={"name": "not a valid name!"})
    assert_error(await call(nc, TOPO.jobs("create"), bad), "invalid_request", "save_as.name")
    assert (await call(nc, TOPO.jobs("list"), {"name": name}))["total"] == 0
    assert_error(await call(nc, TOPO.templates("get"), {"name": "not a valid name!"}), "not_found")
    for subject, body, field in [
        (TOPO.datasets("create"), {"name": "x y", "location": "/tmp"}, "name"),
        (TOPO.datasets("publish"), {"name": unique("none")}, "name"),
        (TOPO.templates("update"), {"name": tname, "bogus": 1}, "bogus"),
        (TOPO.accounts("credit"), {"name": "a", "amount": "lots"}, "amount"),
        (TOPO.jobs("new_version"), {"overrides": {}}, "name"),
    ]:
        reply = await call(nc, subject, body)
        assert "error" in reply and any(d["field"] == field for d in reply["error"]["details"]), (subject, reply)
    for subject in (TOPO.templates("get"), TOPO.datasets("get"), TOPO.accounts("get"), TOPO.algorithms("get")):
        raw = await nc.request(subject, b"\xff\x00 not json", timeout=10)
        assert json.loads(raw.data)["error"]["code"] == "invalid_json"


async def test_cli_registry_commands(nc, tmp_path):
    shown = await asyncio.to_thread(cli, ["algorithm", "show", "torch-mlp"])
    assert shown.exit_code == 0 and "hidden_units" in shown.output and "an integer in [1, 4096]" in shown.output
    listed = await asyncio.to_thread(cli, ["algorithm", "list"])
    assert "xgboost-classifier" in listed.output
    folder = tmp_path / "cli-ds"
    put_file(folder / "a.csv", "x,y\n1,2\n")
    name = unique("cli-ds")
    made = await asyncio.to_thread(cli, ["dataset", "create", name, "--location", str(folder)])
    assert made.exit_code == 0, made.output
    published = await asyncio.to_thread(cli, ["dataset", "publish", name])
    assert f"published {name} V001: 1 file(s)" in published.output, published.output
    files = await asyncio.to_thread(cli, ["dataset", "show", name, "--version", "V001"])
    assert "a.csv" in files.output
    account = await asyncio.to_thread(cli, ["account", "show", "default"])
    assert account.exit_code == 0 and "default:" in account.output
    missing = await asyncio.to_thread(cli, ["template", "show", unique("none")])
    assert missing.exit_code == 1 and "not_found" in missing.output
