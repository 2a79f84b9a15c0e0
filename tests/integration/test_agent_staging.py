"""Staging and storing through the agent process, against a real S3-compatible server (moto):
s3:// inputs downloaded in parallel into the agent's cache and linked into the run, a second job
on the same data downloading nothing, outputs and logs uploaded to s3://; runtimes with a
requirements.txt built once and reused; the per-job log limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_harness import AgentProcess, Bus, assign, open_bus, script_job, start_agent

from services.executor_agent.launch import Source
from services.executor_agent.staging import DataCache
from trainmaster.messages import DataSource
from trainmaster.natsd import NatsServer
from trainmaster.storage import Storage

pytestmark = pytest.mark.integration

LOG_LIMIT = 200_000
FILES = 24


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("staging")


@pytest.fixture(scope="module")
def nats_url(work: Path) -> Iterator[str]:
    server = NatsServer(store_dir=work / "nats", port=-1)
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def agent(nats_url: str, work: Path, s3_server) -> Iterator[AgentProcess]:
    handle = start_agent(nats_url, work, env={**s3_server.env(), "TM_JOB_LOG_LIMIT_BYTES": str(LOG_LIMIT)})
    yield handle
    handle.terminate()


@pytest.fixture
async def bus(nats_url: str, agent: AgentProcess) -> AsyncIterator[Bus]:
    async with open_bus(nats_url, agent) as connected:
        yield connected


@pytest.fixture(scope="module")
def storage(s3_server) -> Storage:
    return Storage(s3_server.settings())


async def make_dataset(storage: Storage, s3_server, tmp_path: Path, bucket: str) -> str:
    import aioboto3

    async with aioboto3.Session().client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                                         aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        await s3.create_bucket(Bucket=bucket)
    src = tmp_path / "dataset"
    (src / "part").mkdir(parents=True)
    for i in range(FILES):
        (src / "part" / f"{i:02d}.csv").write_text("x,y\n" + f"{i},{i * i}\n" * 50)
    await storage.upload(src, f"s3://{bucket}/ds/v1")
    return f"s3://{bucket}/ds/v1"


COUNT_SCRIPT = """\
    import os, sys
    data = sys.argv[1].split("=", 1)[1]
    out = sys.argv[2].split("=", 1)[1]
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs)
    rows = sum(len(open(f).read().splitlines()) - 1 for f in files)
    print(f"COUNT files={len(files)} rows={rows}", flush=True)
    os.makedirs(os.path.join(out, "sub"), exist_ok=True)
    open(os.path.join(out, "model.txt"), "w").write(f"{rows}\\n")
    open(os.path.join(out, "sub", "metrics.json"), "w").write('{"rows": %d}' % rows)
"""


def agent_lines(lines) -> list[str]:
    return [m.data.decode() for m in lines if m.headers["Tm-Stream"] == "trainmaster"]


async def test_s3_inputs_are_cached_and_outputs_and_logs_go_to_s3(bus: Bus, agent: AgentProcess, storage: Storage,
                                                                   s3_server, tmp_path: Path) -> None:
    url = await make_dataset(storage, s3_server, tmp_path, "stage")
    runs = []
    for n in (1, 2):
        spec = script_job(tmp_path, COUNT_SCRIPT, data=[DataSource(path=url)],
                          output_path=f"s3://stage/out/{n}", log_path=f"s3://stage/logs/{n}")
        await bus.send(assign(f"job-s3-{n}", spec))
        exited = await bus.report(f"job-s3-{n}", "exited", timeout_s=60)
        assert (exited.exit_code, exited.reason) == (0, None), agent.output()[-3000:]
        lines = await bus.log_lines(f"job-s3-{n}", until="uploading to")
        assert f"COUNT files={FILES} rows={FILES * 50}" in [m.data.decode() for m in lines]
        runs.append(agent_lines(lines))

    first, second = runs
    assert first[0].startswith(f"[trainmaster] staging data[0] {url}: {FILES} files")
    assert f"; 0 from the cache, {FILES} downloaded" in next(line for line in first if "staged data[0]" in line)
    assert any(line.startswith(f"[trainmaster] downloading data[0]: {FILES}/{FILES} files") for line in first)
    # the second job on the same data downloads nothing: every file comes from the agent's cache
    assert f"; {FILES} from the cache, 0 downloaded (0 B)" in next(line for line in second if "staged" in line)
    assert not any("downloading" in line for line in second)
    assert "[trainmaster] outputs: 2 files" in first[-2] and "uploaded to s3://stage/out/1" in first[-2]

    for n in (1, 2):
        outputs = await storage.list(f"s3://stage/out/{n}")
        assert [o.relative for o in outputs] == ["model.txt", "sub/metrics.json"]
        logs = await storage.list(f"s3://stage/logs/{n}")
        assert [o.relative for o in logs] == ["t-V001-node0.log"]
        got = await storage.download(f"s3://stage/logs/{n}", tmp_path / f"logs-{n}")
        text = got[0].read_text()
        assert text.startswith(f"# trainmaster job job-s3-{n}") and "COUNT files=" in text
        # the log file also stays on the agent, and the staged inputs are gone from the run folder
        run_dir = agent.data_dir / "agents" / "it-agent" / "runs" / f"job-s3-{n}" / "a1-n0"
        assert (run_dir / "logs" / "t-V001-node0.log").read_text() == text
        assert not (run_dir / "input").exists()
    cache = list((agent.data_dir / "agents" / "it-agent" / "cache" / "objects").glob("*/*"))
    assert len(cache) == FILES


async def test_two_nodes_staging_the_same_new_data_download_it_once(storage: Storage, s3_server,
                                                                     tmp_path: Path) -> None:
    url = await make_dataset(storage, s3_server, tmp_path, "twice")
    cache = DataCache(tmp_path / "cache", storage, endpoint=s3_server.endpoint_url, concurrency=4)
    notes: list[str] = []
    sources = [Source(0, url, None, tmp_path / f"run{i}" / "input", True) for i in (1, 2)]
    stats = await asyncio.gather(*(cache.stage(s, notes.append) for s in sources))
    assert sum(s.downloaded for s in stats) == FILES and sum(s.files for s in stats) == 2 * FILES
    for i in (1, 2):
        staged = sorted(p.relative_to(tmp_path / f"run{i}" / "input").as_posix()
                        for p in (tmp_path / f"run{i}" / "input").rglob("*.csv"))
        assert staged == [f"part/{n:02d}.csv" for n in range(FILES)]
    # hard links into the cache: no second copy on disk
    linked = tmp_path / "run1" / "input" / "part" / "00.csv"
    assert linked.stat().st_nlink == 3 and not linked.stat().st_mode & 0o222
    # a changed object has a new ETag: a new cache entry, downloaded; the others are hits
    (tmp_path / "changed").mkdir()
    (tmp_path / "changed" / "00.csv").write_text("x,y\nchanged\n")
    await storage.upload(tmp_path / "changed", f"{url}/part")
    again = await cache.stage(Source(0, url, None, tmp_path / "run3" / "input", True), notes.append)
    assert (again.hits, again.downloaded) == (FILES - 1, 1)
    assert (tmp_path / "run3" / "input" / "part" / "00.csv").read_text() == "x,y\nchanged\n"


async def test_a_runtime_with_requirements_is_built_once_and_reused(bus: Bus, agent: AgentProcess,
                                                                    tmp_path: Path) -> None:
    script = """\
        import inflection, sklearn, sys
        print("USING", inflection.__file__, inflection.camelize("run_fast"), flush=True)
        print("PREFIX", sys.prefix, flush=True)
    """
    durations = []
    for n in (1, 2):
        spec = script_job(tmp_path, script)
        (Path(spec.algorithm.code_dir) / "requirements.txt").write_text("inflection==0.5.1\n")
        started = time.monotonic()
        await bus.send(assign(f"job-rt-{n}", spec))
        exited = await bus.report(f"job-rt-{n}", "exited", timeout_s=90)
        durations.append(time.monotonic() - started)
        assert (exited.exit_code, exited.reason) == (0, None), agent.output()[-3000:]
        lines = await bus.log_lines(f"job-rt-{n}", until="PREFIX")
        text = [m.data.decode() for m in lines]
        using = next(line for line in text if line.startswith("USING"))
        assert "/runtimes/" in using and using.endswith("RunFast")
        if n == 1:
            assert "[trainmaster] runtime scikit-learn 1.5 + requirements.txt: installing -r requirements.txt" in text
            ready = "[trainmaster] runtime scikit-learn 1.5 + requirements.txt ready in"
            assert any(line.startswith(ready) for line in text)
        else:
            assert not agent_lines(lines), "a reused runtime installs nothing"
    root = agent.data_dir / "agents" / "it-agent" / "runtimes"
    runtimes = [p for p in root.iterdir() if (p / "requirements.txt").is_file()]
    assert len(runtimes) == 1 and (runtimes[0] / ".tm-ready").is_file()
    assert "Successfully installed inflection-0.5.1" in (runtimes[0] / "build.log").read_text()
    print(f"runtime with requirements.txt: first job {durations[0]:.1f} s, second {durations[1]:.1f} s")


async def test_a_runtime_that_cannot_be_built_fails_the_node_with_pip_s_words(bus: Bus, tmp_path: Path) -> None:
    spec = script_job(tmp_path, "print('never')\n")
    (Path(spec.algorithm.code_dir) / "requirements.txt").write_text("tm-no-such-package-anywhere==0.0.1\n")
    await bus.send(assign("job-rt-bad", spec))
    exited = await bus.report("job-rt-bad", "exited", timeout_s=90)
    assert exited.exit_code == 2
    assert (exited.reason or "").startswith("runtime build failed: ")
    assert "tm-no-such-package-anywhere" in (exited.reason or ""), exited.reason


async def test_the_job_log_limit_truncates_with_a_marker(bus: Bus, agent: AgentProcess, tmp_path: Path) -> None:
    spec = script_job(tmp_path, """\
        import sys
        for i in range(100_000):
            print(f"chatty line {i:08d}")
        print("done", file=sys.stderr)
    """)
    started = time.monotonic()
    await bus.send(assign("job-chatty-limit", spec))
    exited = await bus.report("job-chatty-limit", "exited", timeout_s=60)
    assert exited.exit_code == 0, exited.reason
    assert time.monotonic() - started < 30, "the script was not kept waiting on a full pipe"
    log_file = tmp_path / "logs" / "t-V001-node0.log"
    assert log_file.stat().st_size < LOG_LIMIT + 1000
    tail = log_file.read_text().splitlines()[-2:]
    assert tail[0].startswith("[trainmaster] log truncated after ") and "further lines are dropped" in tail[0]
    kept = LOG_LIMIT // 21  # "chatty line 00000000" + newline
    assert tail[1] == f"[trainmaster] log truncated after {kept * 21} bytes; {100_001 - kept} more lines dropped"
    lines = await bus.log_lines("job-chatty-limit", until="more lines dropped", count=kept + 2)
    assert len(lines) == kept + 2 and lines[-1].headers["Tm-Stream"] == "trainmaster"


async def test_one_object_and_local_copies_go_through_the_cache_too(storage: Storage, s3_server,
                                                                    tmp_path: Path) -> None:
    url = await make_dataset(storage, s3_server, tmp_path, "single")
    cache = DataCache(tmp_path / "cache", storage, endpoint=s3_server.endpoint_url)
    one = await cache.stage(Source(0, f"{url}/part/01.csv", None, tmp_path / "one", True), lambda _: None)
    assert (one.files, one.downloaded) == (1, 1)
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["01.csv"]

    # TM_STAGE_LOCAL=copy: a local folder is keyed by (path, size, modification time)
    local = tmp_path / "dataset"
    first = await cache.stage(Source(0, str(local), local, tmp_path / "c1", True), lambda _: None)
    second = await cache.stage(Source(0, str(local), local, tmp_path / "c2", True), lambda _: None)
    assert (first.downloaded, second.hits, second.downloaded) == (FILES, FILES, 0)
    (local / "part" / "03.csv").write_text("x,y\nnew\n")
    third = await cache.stage(Source(0, str(local), local, tmp_path / "c3", True), lambda _: None)
    assert (third.hits, third.downloaded) == (FILES - 1, 1)
    assert (tmp_path / "c3" / "part" / "03.csv").read_text() == "x,y\nnew\n"
    assert (tmp_path / "c1" / "part" / "03.csv").read_text() != "x,y\nnew\n", "an earlier run keeps its version"
