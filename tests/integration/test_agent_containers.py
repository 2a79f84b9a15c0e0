"""Custom-image jobs through the agent process, with podman and a tiny image built here from
busybox (no registry): the command's exit code, the data and output mounts, no network, the
flavor's memory limit (137), a prompt stop, no container left behind by a killed agent, and the
command running as the job user with no capabilities (and a read-only root file system when the
agent says so)."""

from __future__ import annotations

import contextlib
import json
import pwd
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from agent_harness import AgentProcess, Bus, assign, open_bus, start_agent
from support import require_container_tools

from services.executor_agent.jobuser import project_user_name
from trainmaster.catalog import SHIPPED
from trainmaster.containers import write_containers_conf
from trainmaster.messages import Algorithm, Cancel, DataSource, JobRequest, Resources
from trainmaster.natsd import NatsServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGE = "localhost/tm-tiny:1"
BUSYBOX = Path("/bin/busybox")



@pytest.fixture(scope="module", autouse=True)
def container_tools() -> None:
    require_container_tools()  # fails, naming what is missing: the feature is claimed


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("containers")


@pytest.fixture(scope="module")
def conf(work: Path) -> Path:
    return write_containers_conf(work / "containers.conf")


def podman(conf: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["podman", *args], input=stdin, capture_output=True, timeout=120,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CONTAINERS_CONF": str(conf)})


@pytest.fixture(scope="module")
def image(work: Path, conf: Path) -> str:
    """busybox with a link per applet, imported as an image (about 0.2 s)."""
    rootfs = work / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "tmp").mkdir()
    (rootfs / "tmp").chmod(0o1777)  # as in every image: the command does not run as root
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    done = podman(conf, "import", "--change", "ENV PATH=/bin", "--change", 'CMD ["/bin/sh"]', "-", IMAGE, stdin=tar)
    assert done.returncode == 0, done.stderr.decode()
    return IMAGE


@pytest.fixture(scope="module")
def catalog(work: Path) -> Path:
    """The shipped catalogs plus a pool whose flavor has 48 MiB of memory."""
    folder = work / "catalog"
    folder.mkdir()
    shutil.copy(SHIPPED / "engines.yaml", folder / "engines.yaml")
    resources = yaml.safe_load((SHIPPED / "resources.yaml").read_text())
    resources["pools"].append({"name": "tiny", "flavors": [
        {"name": "tiny.1", "cpus": 0.5, "memory_mb": 48, "price_per_hour": 0.01}]})
    (folder / "resources.yaml").write_text(yaml.safe_dump(resources))
    return folder


@pytest.fixture(scope="module")
def nats_url(work: Path) -> Iterator[str]:
    server = NatsServer(store_dir=work / "nats", port=-1)
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def project_secrets(work: Path) -> Path:
    """The storage credentials of project ``default`` (the jobs' here)."""
    folder = work / "project-secrets"
    folder.mkdir(mode=0o700)
    path = folder / "default.json"
    path.write_text(json.dumps({"s3": {"access_key_id": "AKIA-DEFAULT", "secret_access_key": "default-secret-value",
                                       "endpoint_url": "http://s3.example:9000"}}))
    path.chmod(0o600)
    return folder


@pytest.fixture(scope="module")
def agent(nats_url: str, work: Path, catalog: Path, image: str, project_secrets: Path) -> Iterator[AgentProcess]:
    handle = start_agent(nats_url, work, env={"TM_CATALOG_DIR": str(catalog),
                                              "TM_AGENT_PROJECT_SECRETS_DIR": str(project_secrets),
                                              "TM_S3_SECRET_ACCESS_KEY": "the-agents-own-key"})
    yield handle
    handle.terminate()


@pytest.fixture
async def bus(nats_url: str, agent: AgentProcess) -> AsyncIterator[Bus]:
    async with open_bus(nats_url, agent) as connected:
        yield connected


def container_job(tmp_path: Path, script: str, pool: str = "cpu", image: str = IMAGE) -> JobRequest:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "in.txt").write_text("hello from the host\n")
    return JobRequest(name="t", data=[DataSource(path=str(data))],
                      algorithm=Algorithm(source="custom", image=image, command=["sh", "-c", script]),
                      parameters={"epochs": 2}, output_path=str(tmp_path / "out"), log_path=str(tmp_path / "logs"),
                      resources=Resources(pool=pool))


def containers(conf: Path, job_id: str) -> list[str]:
    done = podman(conf, "ps", "-a", "--format", "{{.Names}}", "--filter", f"name=tm-{job_id}-")
    return done.stdout.decode().split()


async def test_a_custom_image_runs_with_mounts_env_no_network_and_its_exit_code(bus: Bus, tmp_path: Path,
                                                                                conf: Path) -> None:
    script = """
        cat /data/in.txt
        echo "net: $(ls /sys/class/net | tr '\\n' ' ')"
        echo "env: $TM_JOB_ID $RANK/$WORLD_SIZE $TM_DATA_URL $TM_TRAIN_URL args: $0"
        touch /data/x 2>/dev/null && echo "data is writable" || echo "data is read-only"
        echo 42 > /output/result.txt
        echo "bad news" >&2
        exit 3
    """
    await bus.send(assign("job-box", container_job(tmp_path, script)))
    exited = await bus.report("job-box", "exited", timeout_s=60)
    assert (exited.exit_code, exited.reason) == (3, "the container exited with code 3: bad news")
    lines = [m.data.decode() for m in await bus.log_lines("job-box", until="bad news")]
    assert "hello from the host" in lines
    assert "net: lo " in lines, "only the loopback interface: --network=none"
    assert "env: job-box 0/1 /data /output args: --epochs=2" in lines
    assert "data is read-only" in lines
    assert (tmp_path / "out" / "result.txt").read_text() == "42\n"
    assert containers(conf, "job-box") == [], "--rm removed the container"
    header = (tmp_path / "logs" / "t-V001-node0.log").read_text().splitlines()[0]
    assert "podman run --rm --name tm-job-box-a1-n0 --init --network none" in header


async def test_a_container_gets_its_project_s_credentials_by_name_only(bus: Bus, agent: AgentProcess,
                                                                       tmp_path: Path) -> None:
    script = """
        echo "aws: $AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY $AWS_ENDPOINT_URL"
        echo "tm_s3: $(env | grep -c '^TM_S3')"
    """
    await bus.send(assign("job-keys", container_job(tmp_path, script)))
    exited = await bus.report("job-keys", "exited", timeout_s=60)
    assert (exited.exit_code, exited.reason) == (0, None)
    lines = [m.data.decode() for m in await bus.log_lines("job-keys", until="tm_s3: ")]
    assert "aws: AKIA-DEFAULT default-secret-value http://s3.example:9000" in lines
    assert "tm_s3: 0" in lines, "the agent's own TM_S3_* stay out"
    header = (tmp_path / "logs" / "t-V001-node0.log").read_text().splitlines()[0]
    started = next(line for line in agent.output().splitlines() if "node started" in line and "job-keys" in line)
    assert "AWS_SECRET_ACCESS_KEY" in started, "named on podman's command line (-e NAME)"
    for shown in (header, started, agent.output()):
        assert "default-secret-value" not in shown and "AKIA-DEFAULT" not in shown


async def test_the_flavor_s_memory_limit_holds(bus: Bus, tmp_path: Path) -> None:
    await bus.send(assign("job-greedy", container_job(tmp_path, "dd if=/dev/zero of=/dev/null bs=200M count=1",
                                                       pool="tiny")))
    exited = await bus.report("job-greedy", "exited", timeout_s=60)
    assert exited.exit_code == 137
    assert (exited.reason or "").startswith("the container was killed (exit 137): over its memory limit")


async def test_a_missing_image_fails_at_once(bus: Bus, tmp_path: Path) -> None:
    await bus.send(assign("job-noimage", container_job(tmp_path, "true", image="localhost/tm-nope:1")))
    exited = await bus.report("job-noimage", "exited", timeout_s=60)
    assert exited.exit_code == 125 and "podman could not run the container" in (exited.reason or "")


async def test_a_cancel_stops_the_container_promptly(bus: Bus, tmp_path: Path, conf: Path) -> None:
    await bus.send(assign("job-sleepy", container_job(tmp_path, "echo ready; sleep 300")))
    await bus.log_lines("job-sleepy", until="ready")
    started = time.monotonic()
    await bus.send(Cancel(job_id="job-sleepy", reason="enough"))
    exited = await bus.report("job-sleepy", "exited", timeout_s=30)
    assert (exited.exit_code, exited.reason) == (143, "stopped: enough")
    assert time.monotonic() - started < 10
    assert containers(conf, "job-sleepy") == []


async def test_a_killed_agent_leaves_no_container_behind(nats_url: str, work: Path, catalog: Path, conf: Path,
                                                         tmp_path: Path) -> None:
    first = start_agent(nats_url, work, name="agent-b", env={"TM_CATALOG_DIR": str(catalog)}, agent_id="it-agent-b")
    second: AgentProcess | None = None
    try:
        async with open_bus(nats_url, first, agent_id="it-agent-b") as bus:
            await bus.send(assign("job-ghost", container_job(tmp_path, "echo ready; sleep 300")))
            await bus.report("job-ghost", "running", timeout_s=30)
            await bus.log_lines("job-ghost", until="ready")
            assert containers(conf, "job-ghost") == ["tm-job-ghost-a1-n0"]
            first.proc.kill()  # no chance to stop anything; the container runs on under conmon
            first.proc.wait()
            second = start_agent(nats_url, work, name="agent-b2", env={"TM_CATALOG_DIR": str(catalog)},
                                 agent_id="it-agent-b")
            exited = await bus.report("job-ghost", "exited", timeout_s=30)
            assert exited.exit_code == 137 and (exited.reason or "").startswith("lost:")
            assert containers(conf, "job-ghost") == []
    finally:
        for handle in (first, second):
            if handle is not None:
                handle.terminate()
        with contextlib.suppress(Exception):
            podman(conf, "rm", "-f", "--ignore", "tm-job-ghost-a1-n0")


async def test_the_command_runs_as_the_job_user_without_capabilities(bus: Bus, tmp_path: Path) -> None:
    script = """
        echo "ids: $(id -u):$(id -g)"
        grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status
        touch /etc/planted 2>/dev/null && echo "root fs is writable" || echo "root fs is read-only"
        echo done > /output/done.txt && echo "output written"
    """
    await bus.send(assign("job-nocaps", container_job(tmp_path, script)))
    exited = await bus.report("job-nocaps", "exited", timeout_s=60)
    assert exited.exit_code == 0, exited.reason
    lines = [m.data.decode() for m in await bus.log_lines("job-nocaps", until="output written")]
    job_user = pwd.getpwnam(project_user_name("default"))  # its project's user (the job names no project)
    assert f"ids: {job_user.pw_uid}:{job_user.pw_gid}" in lines
    status = dict(line.split(":\t") for line in lines if line.startswith(("Cap", "NoNewPrivs")))
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000", status
    assert status["NoNewPrivs"] == "1"
    assert "root fs is read-only" in lines, "not root: the image's files are not the job user's"
    assert (tmp_path / "out" / "done.txt").read_text() == "done\n"


async def test_a_read_only_root_still_has_tmp_and_output(nats_url: str, work: Path, catalog: Path,
                                                         tmp_path: Path) -> None:
    handle = start_agent(nats_url, work, name="agent-ro", agent_id="it-agent-ro",
                         env={"TM_CATALOG_DIR": str(catalog), "TM_CONTAINER_READ_ONLY": "true"})
    script = """
        mount | grep -E ' on / ' | grep -q '(ro' && echo "root: ro" || echo "root: rw"
        echo x > /tmp/scratch && echo "tmp: writable"
        echo kept > /output/kept.txt && echo "output: writable"
    """
    try:
        async with open_bus(nats_url, handle, agent_id="it-agent-ro") as bus:
            await bus.send(assign("job-ro", container_job(tmp_path, script)))
            exited = await bus.report("job-ro", "exited", timeout_s=60)
            assert exited.exit_code == 0, exited.reason
            lines = [m.data.decode() for m in await bus.log_lines("job-ro", until="output: writable")]
    finally:
        handle.terminate()
    assert "root: ro" in lines and "tmp: writable" in lines
    assert (tmp_path / "out" / "kept.txt").read_text() == "kept\n"
