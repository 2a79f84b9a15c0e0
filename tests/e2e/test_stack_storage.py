"""The whole stack with object storage and a custom image: a job whose data, outputs and logs are
``s3://`` locations on a real S3-compatible server (moto), and a custom-image job under podman.
Both go through the validator, which accepts both (the contract claims them): a refusal fails the
test with the validator's details, and so does a machine without podman/runc/busybox-static."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioboto3
import pytest
from nats.aio.client import Client as NATS
from support import (
    LIVE,
    STACK_CREDS,
    LoopThread,
    ServiceProcess,
    connect,
    eventually,
    read_stream,
    request_json,
    require_container_tools,
    script_job,
    wait_ready,
)

from trainmaster.containers import write_containers_conf
from trainmaster.settings import Settings
from trainmaster.storage import Storage
from trainmaster.supervisor import AgentConf, Stack
from trainmaster.topology import Topology

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOPO = Topology()
AGENT_ID = "e2e-s3"
TERMINAL = {"Succeeded", "Failed", "Stopped"}


@pytest.fixture(scope="module")
def stack_url(tmp_path_factory: pytest.TempPathFactory, s3_server) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("s3-stack")
    loop = LoopThread()
    watched: list[ServiceProcess] = []
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"TM_LOG_LEVEL": "INFO", "TM_STOP_GRACE_S": "3", **s3_server.env()}.items():
            env.setenv(key, value)
        stack = Stack(Settings(data_dir=data_dir, nats_port=-1), [AgentConf(AGENT_ID, "cpu")], echo=lambda *_: None)
        try:
            loop.run(stack.start())
            STACK_CREDS[stack.url] = stack.auth.admin_creds
            for child in stack.children:
                svc = ServiceProcess(child.name, child.module.removeprefix("services."), child.log_path,
                                     proc=child.proc, env=child.env)
                watched.append(svc)
                LIVE.append(svc)
            loop.run(wait_ready(watched, stack.url, TOPO))
            yield stack.url
        finally:
            stack.stop()
            loop.close()
            for svc in watched:
                LIVE.remove(svc)


@pytest.fixture
async def nc(stack_url: str) -> AsyncIterator[NATS]:
    client = await connect(stack_url, connect_timeout=5)

    async def registered() -> bool:
        reply = await request_json(client, TOPO.agents_list, b"{}")
        return AGENT_ID in [a["agent_id"] for a in reply["agents"]]

    await eventually(registered, 20, 0.2, what="the agent to register")
    yield client
    await client.close()


async def create(nc: NATS, spec: dict, what: str) -> dict:
    job = await request_json(nc, TOPO.jobs("create"), json.dumps(spec).encode(),
                             headers={"Nats-Msg-Id": f"e2e-{uuid.uuid4()}"}, timeout_s=30)
    if "error" in job:
        details = [(d["field"], d["code"], d["message"]) for d in job["error"]["details"]]
        pytest.fail(f"the validator refused {what}, which the contract claims: {details}", pytrace=False)
    return job


async def test_s3_data_outputs_and_logs_through_the_stack(nc: NATS, s3_server, tmp_path: Path) -> None:
    async with aioboto3.Session().client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                                         aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        await s3.create_bucket(Bucket="e2e")
    storage = Storage(s3_server.settings())
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "rows.csv").write_text("a\n1\n2\n3\n")
    await storage.upload(tmp_path / "ds", "s3://e2e/data/v1")
    name = f"s3job-{uuid.uuid4().hex[:6]}"
    spec = script_job(tmp_path, name, textwrap.dedent("""
        import os, sys
        data = sys.argv[1].split("=", 1)[1]; out = sys.argv[2].split("=", 1)[1]
        rows = open(os.path.join(data, "rows.csv")).read().split()[1:]
        print(f"ROWS {len(rows)}", flush=True)
        open(os.path.join(out, "count.txt"), "w").write(str(len(rows)))
    """), data=[{"path": "s3://e2e/data/v1"}], output_path=f"s3://e2e/out/{name}", log_path=f"s3://e2e/logs/{name}")
    job = await create(nc, spec, "s3:// data, output and log paths")
    pairs = await read_stream(nc, TOPO.job_events(job["id"]), until=lambda e: e["data"]["status"] in TERMINAL,
                              timeout_s=60)
    assert pairs[-1][1]["data"]["status"] == "Succeeded", pairs[-1][1]["data"]
    assert [o.relative for o in await storage.list(f"s3://e2e/out/{name}")] == ["count.txt"]
    assert [o.relative for o in await storage.list(f"s3://e2e/logs/{name}")] == [f"{name}-V001-node0.log"]


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    require_container_tools()
    work = tmp_path_factory.mktemp("image")
    conf = write_containers_conf(work / "containers.conf")
    rootfs = work / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "echo", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    subprocess.run(["podman", "import", "--change", "ENV PATH=/bin", "-", "localhost/tm-e2e:1"], input=tar,
                   check=True, capture_output=True, env={"PATH": "/usr/bin:/bin", "CONTAINERS_CONF": str(conf)})
    return "localhost/tm-e2e:1"


async def test_a_custom_image_job_through_the_stack(nc: NATS, tiny_image: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_text("7\n")
    spec = {"name": f"box-{uuid.uuid4().hex[:6]}", "data": [{"path": str(data)}],
            "algorithm": {"source": "custom", "image": tiny_image,
                          "command": ["sh", "-c", "cat /data/x.txt > /output/y.txt; echo boxed"]},
            "output_path": str(tmp_path / "out"), "log_path": str(tmp_path / "logs"),
            "resources": {"pool": "cpu", "node_count": 1}}
    job = await create(nc, spec, "custom-image jobs")
    pairs = await read_stream(nc, TOPO.job_events(job["id"]), until=lambda e: e["data"]["status"] in TERMINAL,
                              timeout_s=60)
    assert pairs[-1][1]["data"]["status"] == "Succeeded", pairs[-1][1]["data"]
    assert (tmp_path / "out" / "y.txt").read_text() == "7\n"
