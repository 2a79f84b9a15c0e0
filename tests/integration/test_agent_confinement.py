"""A job confined to its own files, with real jobs through a real agent (and a real validator):
paths outside the project's storage roots refused, links in the output folder not followed, an
output or log folder of someone else left alone, a job's own folder written again by its next
version.  The agent is told its roots (``TM_STORAGE_ROOTS``): the test's folder only.  Jobs are
assigned directly, as if the validator had been bypassed (or a link changed since it looked).
Local data is copied through the agent's cache (``TM_STAGE_LOCAL=copy``): the agent reads it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioboto3
import msgspec
import pytest
from agent_harness import AgentProcess, Bus, open_bus, script_job, start_agent
from support import Services, assert_error, request_json
from support import script_job as request_script_job

from trainmaster.messages import Assign, DataSource, JobRequest
from trainmaster.natsd import NatsServer
from trainmaster.storage import Storage
from trainmaster.storage_roots import MARKER
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration

TOPO = Topology()
PROJECT = "team-a"

# what a hostile job leaves in its output folder: a link to a file only root may read, a link to /etc
LINKING_SCRIPT = """\
    import os, sys
    out = sys.argv[2].split("=", 1)[1]
    secret = os.environ.get("SECRET_FILE") or {secret!r}
    open(os.path.join(out, "model.txt"), "w").write("weights\\n")
    os.symlink(secret, os.path.join(out, "stolen"))
    os.symlink("/etc", os.path.join(out, "etc"))
    os.mkfifo(os.path.join(out, "pipe"))
    print("linked", flush=True)
"""


@pytest.fixture
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root-only file outside the job's storage roots."""
    path = tmp_path_factory.mktemp("elsewhere") / "shadow"
    path.write_text("root:the-hash:19000::::::\n")
    path.chmod(0o600)
    return path


def roots_env(tmp_path: Path, project: str = PROJECT) -> dict[str, str]:
    return {"TM_STORAGE_ROOTS": json.dumps({project: [str(tmp_path)]})}


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    server = NatsServer(store_dir=tmp_path / "nats", port=-1)
    yield server.start()
    server.stop()


@pytest.fixture
def agent(nats_url: str, tmp_path: Path, s3_server) -> Iterator[AgentProcess]:
    handle = start_agent(nats_url, tmp_path, env={**s3_server.env(), **roots_env(tmp_path), "TM_STAGE_LOCAL": "copy"})
    yield handle
    handle.terminate()


@pytest.fixture
async def bus(nats_url: str, agent: AgentProcess) -> AsyncIterator[Bus]:
    async with open_bus(nats_url, agent) as connected:
        yield connected


def assign(job_id: str, spec: JobRequest, version: str = "V001") -> Assign:
    spec = msgspec.structs.replace(spec, account=PROJECT)
    return Assign(job_id=job_id, attempt=1, node=0, node_count=1, spec=spec, name="t", version=version)


async def ends(bus: Bus, job_id: str) -> tuple[int | None, str]:
    exited = await bus.report(job_id, "exited", timeout_s=60)
    return exited.exit_code, exited.reason or ""


# ------------------------------------------------------------------------------ the agent
async def test_paths_outside_the_roots_are_refused_by_the_agent(bus: Bus, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    script = f"open({str(ran)!r}, 'w').write('ran')\n"
    await bus.send(assign("job-etc", script_job(tmp_path, script, data=[DataSource(path="/etc")])))
    code, reason = await ends(bus, "job-etc")
    assert code == 2 and reason.startswith("data[0].path /etc is outside the storage roots of project team-a"), reason
    assert str(tmp_path) in reason

    # a link inside the root that leads out (put there after validation, say)
    (tmp_path / "innocent").symlink_to("/etc")
    await bus.send(assign("job-link", script_job(tmp_path, script, data=[DataSource(path=str(tmp_path / "innocent"))])))
    code, reason = await ends(bus, "job-link")
    assert code == 2 and "(it resolves to /etc) is outside the storage roots" in reason, reason

    elsewhere = tmp_path.parent / f"{tmp_path.name}-logs"  # beside the root: a look-alike name
    await bus.send(assign("job-logs", script_job(tmp_path, script, log_path=str(elsewhere))))
    code, reason = await ends(bus, "job-logs")
    assert code == 2 and reason.startswith(f"log_path {elsewhere} is outside the storage roots"), reason
    assert not elsewhere.exists()
    assert not ran.exists(), "a refused job ran"


async def test_links_and_special_files_in_the_output_folder_are_not_copied(bus: Bus, tmp_path: Path,
                                                                          secret: Path) -> None:
    spec = script_job(tmp_path, LINKING_SCRIPT.format(secret=str(secret)))
    await bus.send(assign("job-links", spec))
    assert await ends(bus, "job-links") == (0, "")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "model.txt"]
    copied = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert "the-hash" not in copied
    log = (tmp_path / "logs" / "t-V001-node0.log").read_text()
    assert ("[trainmaster] outputs: 2 symbolic links and 1 special file (device, fifo, socket) not copied"
            in log), log
    assert json.loads((out / MARKER).read_text()) == {"project": PROJECT, "name": "t", "job_id": "job-links",
                                                      "version": "V001"}


async def test_an_output_folder_of_someone_else_is_refused_and_left_alone(bus: Bus, tmp_path: Path) -> None:
    home = tmp_path / "home" / ".ssh"
    home.mkdir(parents=True)
    keys = home / "authorized_keys"
    keys.write_text("ssh-ed25519 AAAA owner@host\n")
    ran = tmp_path / "ran"
    script = f"""\
        import os, sys
        open({str(ran)!r}, 'w').write('ran')
        out = sys.argv[2].split("=", 1)[1]
        open(os.path.join(out, "authorized_keys"), "w").write("ssh-ed25519 EVIL attacker\\n")
    """
    await bus.send(assign("job-keys", script_job(tmp_path, script, output_path=str(home))))
    code, reason = await ends(bus, "job-keys")
    assert (code, reason) == (2, f"output_path {home} holds files of something else: choose an empty folder")
    assert keys.read_text() == "ssh-ed25519 AAAA owner@host\n"
    assert sorted(p.name for p in home.iterdir()) == ["authorized_keys"]
    assert not ran.exists()

    # the same for a log folder
    logs = tmp_path / "other-logs"
    logs.mkdir()
    (logs / "t-V001-node0.log").write_text("someone's log\n")
    await bus.send(assign("job-logs", script_job(tmp_path, "print(1)\n", log_path=str(logs))))
    code, reason = await ends(bus, "job-logs")
    assert (code, reason) == (2, f"log_path {logs} holds files of something else: choose an empty folder")
    assert (logs / "t-V001-node0.log").read_text() == "someone's log\n"


async def test_the_next_version_writes_into_its_own_output_folder(bus: Bus, tmp_path: Path) -> None:
    script = """\
        import os, sys
        out = sys.argv[2].split("=", 1)[1]
        open(os.path.join(out, "model.txt"), "w").write(os.environ["TM_JOB_VERSION"])
    """
    for n, version in enumerate(("V001", "V002"), start=1):
        await bus.send(assign(f"job-v{n}", script_job(tmp_path, script), version=version))
        assert await ends(bus, f"job-v{n}") == (0, "")
        assert (tmp_path / "out" / "model.txt").read_text() == version
        assert json.loads((tmp_path / "out" / MARKER).read_text())["version"] == version
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == [MARKER, "t-V001-node0.log", "t-V002-node0.log"]


async def test_an_s3_upload_does_not_follow_links(bus: Bus, tmp_path: Path, secret: Path, s3_server) -> None:
    async with aioboto3.Session().client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                                         aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        await s3.create_bucket(Bucket="confined")
    spec = script_job(tmp_path, LINKING_SCRIPT.format(secret=str(secret)), output_path="s3://confined/out")
    await bus.send(assign("job-s3", spec))
    assert await ends(bus, "job-s3") == (0, "")
    listed = await Storage(s3_server.settings()).list("s3://confined/out")
    assert [o.relative for o in listed] == ["model.txt"]


async def test_links_out_of_the_roots_in_local_data_are_not_copied_in(bus: Bus, tmp_path: Path,
                                                                      secret: Path) -> None:
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "rows.csv").write_text("a\n1\n")
    (data / "shadow.csv").symlink_to(secret)
    (data / "inside.csv").symlink_to(data / "rows.csv")  # a link that stays inside is followed
    script = """\
        import os, sys
        data = sys.argv[1].split("=", 1)[1]
        for name in sorted(os.listdir(data)):
            print("FILE", name, open(os.path.join(data, name)).read().strip(), flush=True)
    """
    await bus.send(assign("job-copy", script_job(tmp_path, script, data=[DataSource(path=str(data))])))
    assert await ends(bus, "job-copy") == (0, "")
    log = (tmp_path / "logs" / "t-V001-node0.log").read_text()
    files = [line for line in log.splitlines() if line.startswith("FILE ")]
    assert files == ["FILE inside.csv a", "FILE rows.csv a"], log
    assert "the-hash" not in log
    assert "1 files skipped: symbolic links that lead out of the storage roots" in log


# ------------------------------------------------------------------------------ the validator
async def test_the_validator_refuses_paths_outside_the_roots(nats_server: str, services: Services,
                                                             tmp_path: Path) -> None:
    import nats

    services.start(nats_server, "job_intake", "validator", env=roots_env(tmp_path, "default"))
    nc = await nats.connect(nats_server, connect_timeout=5)
    try:
        spec = request_script_job(tmp_path, "confined", "print(1)\n")
        spec["data"] = [{"path": "/etc"}]
        spec["log_path"] = "/var/log/confined"
        reply = await request_json(nc, TOPO.jobs("create"), spec, timeout_s=20)
        error = assert_error(reply, "validation_failed")
        details = {(d["field"], d["code"]) for d in error["details"]}
        assert details == {("data[0].path", "path_not_allowed"), ("log_path", "path_not_allowed")}, error
        message = next(d["message"] for d in error["details"] if d["field"] == "data[0].path")
        assert message.startswith("data path /etc is outside the storage roots of project default")
        ok = request_script_job(tmp_path, "confined-ok", "print(1)\n")
        created = await request_json(nc, TOPO.jobs("create"), ok, timeout_s=20)
        assert created.get("status") == "Pending", created
    finally:
        await nc.close()
