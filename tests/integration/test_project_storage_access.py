"""A job's S3 access comes from its project, through a real agent, real jobs and a real
S3-compatible server (moto): a job of team-a gets team-a's credentials (``AWS_*``) and lists its
prefix with boto3, a job of team-b gets team-b's, a project whose file others may read gets nothing
(and the agent's log says why), the agent's own ``TM_S3_*`` never reaches a job, the values never
reach a log; an ``s3://`` output outside the project's ``s3://`` roots is refused by the agent and
by the validator."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import msgspec
import pytest
from agent_harness import AgentProcess, Bus, open_bus, script_job, start_agent
from support import Services, assert_error, request_json
from support import script_job as request_script_job

from trainmaster.messages import Assign, JobRequest
from trainmaster.natsd import NatsServer
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration

TOPO = Topology()
BUCKET = "projects"

# what the job saw: the AWS_ and TM_S3 names with a digest of each value (the values stay out of
# the log), and what boto3 lists under its prefix with whatever credentials it was given
SCRIPT = """\
    import hashlib, json, os
    seen = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in os.environ.items()
            if k.startswith(("AWS_", "TM_S3"))}
    print("ENV " + json.dumps(seen, sort_keys=True), flush=True)
    if "AWS_ACCESS_KEY_ID" in os.environ:
        import boto3
        listed = boto3.client("s3").list_objects_v2(Bucket="BUCKET", Prefix=os.environ["PREFIX"] + "/")
        print("LISTED " + json.dumps([o["Key"] for o in listed.get("Contents", [])]), flush=True)
""".replace("BUCKET", BUCKET)


def keys(project: str, endpoint: str) -> dict[str, str]:
    return {"access_key_id": f"AKIA-{project}", "secret_access_key": f"{project}-secret-value",
            "endpoint_url": endpoint, "region": "us-east-1"}


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("project-access")


@pytest.fixture(scope="module")
def nats_url(work: Path) -> Iterator[str]:
    server = NatsServer(store_dir=work / "nats", port=-1)
    yield server.start()
    server.stop()


def roots(work: Path) -> dict[str, list[str]]:
    return {project: [str(work), f"s3://{BUCKET}/{project}"] for project in ("team-a", "team-b", "team-c")}


@pytest.fixture(scope="module")
def agent(nats_url: str, work: Path, s3_server) -> Iterator[AgentProcess]:
    secrets = work / "project-secrets"
    secrets.mkdir(mode=0o700)
    for project, mode in (("team-a", 0o600), ("team-b", 0o600), ("team-c", 0o644)):
        path = secrets / f"{project}.json"
        path.write_text(json.dumps({"s3": keys(project, s3_server.endpoint_url)}))
        path.chmod(mode)
    handle = start_agent(nats_url, work, env={**s3_server.env(), "TM_STORAGE_ROOTS": json.dumps(roots(work)),
                                              "TM_AGENT_PROJECT_SECRETS_DIR": str(secrets)})
    yield handle
    handle.terminate()


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    for key in ("team-a/data/one.csv", "team-a/data/two.csv", "team-b/data/three.csv"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x\n")
    return BUCKET


@pytest.fixture
async def bus(nats_url: str, agent: AgentProcess, bucket: str) -> AsyncIterator[Bus]:
    async with open_bus(nats_url, agent) as connected:
        yield connected


def assign(job_id: str, spec: JobRequest, project: str) -> Assign:
    spec = msgspec.structs.replace(spec, account=project, env={"PREFIX": project})
    return Assign(job_id=job_id, attempt=1, node=0, node_count=1, spec=spec, name=job_id, version="V001")


async def run(bus: Bus, agent: AgentProcess, work: Path, job_id: str, project: str,
              **fields: object) -> tuple[dict[str, str], list[str] | None, list[str]]:
    """Run the script as a job of ``project``: (what it saw, what it listed, its log lines)."""
    folder = work / job_id
    folder.mkdir()
    spec = script_job(folder, SCRIPT, output_path=f"s3://{BUCKET}/{project}/out/{job_id}", **fields)
    await bus.send(assign(job_id, spec, project))
    exited = await bus.report(job_id, "exited", timeout_s=60)
    assert (exited.exit_code, exited.reason) == (0, None), agent.output()[-3000:]
    lines = [m.data.decode() for m in await bus.log_lines(job_id, until="ENV ")]
    if any(line.startswith("ENV ") and "AWS_ACCESS_KEY_ID" in line for line in lines):
        lines += [m.data.decode() for m in await bus.log_lines(job_id, until="LISTED ")]
    seen = json.loads(next(line for line in lines if line.startswith("ENV "))[4:])
    listed = next((json.loads(line[7:]) for line in lines if line.startswith("LISTED ")), None)
    return seen, listed, lines


def expected(project: str, endpoint: str) -> dict[str, str]:
    given = keys(project, endpoint)
    return {"AWS_ACCESS_KEY_ID": digest(given["access_key_id"]),
            "AWS_SECRET_ACCESS_KEY": digest(given["secret_access_key"]),
            "AWS_ENDPOINT_URL": digest(endpoint), "AWS_DEFAULT_REGION": digest("us-east-1")}


async def test_each_project_gets_its_own_credentials_and_never_the_agents(bus: Bus, agent: AgentProcess,
                                                                           work: Path, s3_server) -> None:
    seen, listed, _ = await run(bus, agent, work, "job-a", "team-a")
    assert seen == expected("team-a", s3_server.endpoint_url)  # no TM_S3_*, nothing else of AWS_
    assert listed == ["team-a/data/one.csv", "team-a/data/two.csv"]

    seen, listed, _ = await run(bus, agent, work, "job-b", "team-b")
    assert seen == expected("team-b", s3_server.endpoint_url)
    assert listed == ["team-b/data/three.csv"]

    output = agent.output()
    for project in ("team-a", "team-b", "team-c"):
        assert f"{project}-secret-value" not in output and f"AKIA-{project}" not in output
    assert "testing" not in output.replace("tests", "")  # nor the agent's own key
    assert "the node gets its project's storage credentials" in output


async def test_a_file_others_may_read_gives_nothing_and_the_log_says_why(bus: Bus, agent: AgentProcess,
                                                                         work: Path) -> None:
    seen, listed, lines = await run(bus, agent, work, "job-c", "team-c")
    assert seen == {} and listed is None
    assert "[trainmaster] no storage credentials for project team-c: the agent's file for it is not usable " \
           "(the agent's log says why)" in lines
    output = agent.output()
    assert "the project's storage credentials are not given to the node" in output
    assert "team-c.json is not used: group or others may read or write it (mode 0644): make it 0600" in output


async def test_an_s3_output_outside_the_projects_roots_is_refused_by_the_agent(bus: Bus, agent: AgentProcess,
                                                                               work: Path) -> None:
    folder = work / "job-out"
    folder.mkdir()
    ran = folder / "ran"
    spec = script_job(folder, f"open({str(ran)!r}, 'w').write('ran')\n",
                      output_path=f"s3://{BUCKET}/team-b/out", log_path=f"s3://{BUCKET}/team-a-evil/logs")
    await bus.send(assign("job-out", spec, "team-a"))
    exited = await bus.report("job-out", "exited", timeout_s=60)
    assert exited.exit_code == 2, exited.reason
    assert (exited.reason or "").startswith(f"output_path s3://{BUCKET}/team-b/out is outside the storage roots of "
                                            f"project team-a: s3://{BUCKET}/team-a;"), exited.reason
    assert not ran.exists(), "a refused job ran"


async def test_the_validator_refuses_an_s3_output_outside_the_projects_roots(nats_server: str, services: Services,
                                                                             tmp_path: Path, s3_server,
                                                                             bucket: str) -> None:
    import nats

    env = {**s3_server.env(), "TM_STORAGE_ROOTS": json.dumps({"default": [str(tmp_path), f"s3://{BUCKET}/team-a"]})}
    services.start(nats_server, "job_intake", "validator", env=env)
    nc = await nats.connect(nats_server, connect_timeout=5)
    try:
        spec = request_script_job(tmp_path, "s3-out", "print(1)\n", output_path=f"s3://{BUCKET}/team-a-evil/out")
        error = assert_error(await request_json(nc, TOPO.jobs("create"), spec, timeout_s=20), "validation_failed")
        assert {(d["field"], d["code"]) for d in error["details"]} == {("output_path", "path_not_allowed")}, error
        assert error["details"][0]["message"].startswith(
            f"output location s3://{BUCKET}/team-a-evil/out is outside the storage roots of project default: "
            f"s3://{BUCKET}/team-a;")
        ok = request_script_job(tmp_path, "s3-ok", "print(1)\n", output_path=f"s3://{BUCKET}/team-a/out")
        created = await request_json(nc, TOPO.jobs("create"), ok, timeout_s=20)
        assert created.get("status") == "Pending", created
    finally:
        await nc.close()
