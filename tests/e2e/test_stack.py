"""The whole stack as separate processes (``trainmaster.supervisor.Stack``: nats-server, the four
services and one local agent), driven only through the public subjects with plain nats-py, as a
client that knows nothing of this code would: JSON requests on ``tm.jobs.*``, CloudEvents read
from ``tm.events.job.<id>``, log lines from ``tm.logs.<id>.<node>``."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from support import (
    LIVE,
    STACK_CREDS,
    LoopThread,
    ServiceProcess,
    assert_error,
    connect,
    eventually,
    iris_job,
    read_stream,
    request_json,
    script_job,
    wait_ready,
)

from trainmaster.settings import Settings
from trainmaster.supervisor import AgentConf, Stack
from trainmaster.topology import Topology

pytestmark = pytest.mark.e2e

TOPO = Topology()
AGENT_ID = "e2e-1"
TERMINAL = {"Succeeded", "Failed", "Stopped"}


class RunningStack:
    def __init__(self, stack: Stack, data_dir: Path, traces: Path) -> None:
        self.stack = stack
        self.url = stack.url
        self.data_dir = data_dir
        self.traces = traces


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("stack")
    traces = data_dir / "traces.jsonl"
    # Stack.start runs nats-server from a worker thread of its event loop, and its children die
    # with the thread that started them (PR_SET_PDEATHSIG): keep that loop alive all along
    loop = LoopThread()
    watched: list[ServiceProcess] = []
    with pytest.MonkeyPatch.context() as env:
        # the supervisor hands its own environment to the children: this is how they are configured
        for key, value in {"TM_OTEL_EXPORTER": "file", "TM_OTEL_FILE": str(traces), "TM_LOG_LEVEL": "INFO",
                           "TM_STOP_GRACE_S": "3", "TM_SUBJECT_PREFIX": TOPO.prefix}.items():
            env.setenv(key, value)
        stack = Stack(Settings(data_dir=data_dir, nats_port=-1, otel_exporter="file"), [AgentConf(AGENT_ID, "cpu")],
                      echo=lambda *_: None)
        try:
            loop.run(stack.start())
            STACK_CREDS[stack.url] = stack.auth.admin_creds
            for child in stack.children:
                module = child.module.removeprefix("services.")
                svc = ServiceProcess(child.name, module, child.log_path, proc=child.proc, env=child.env)
                watched.append(svc)
                LIVE.append(svc)
            loop.run(wait_ready(watched, stack.url, TOPO))
            loop.run(agent_registered(stack.url))
            yield RunningStack(stack, data_dir, traces)
        finally:
            stack.stop()
            loop.close()
            for svc in watched:
                LIVE.remove(svc)
    # every process stops cleanly on SIGTERM, within the supervisor's grace (not killed)
    unclean = {svc.name: svc.proc.returncode for svc in watched if svc.proc and svc.proc.returncode != 0}
    assert not unclean, f"not stopped cleanly: {unclean}; logs in {data_dir / 'logs'}"


async def agent_registered(url: str) -> None:
    nc = await connect(url)
    try:
        async def check() -> bool:
            reply = await request_json(nc, TOPO.agents_list, b"{}")
            return AGENT_ID in [a["agent_id"] for a in reply["agents"]]

        await eventually(check, 20, 0.2, what=f"agent {AGENT_ID} to register")
    finally:
        await nc.close()


@pytest.fixture
async def nc(stack: RunningStack) -> AsyncIterator[NATS]:
    client = await connect(stack.url, connect_timeout=5)
    yield client
    await client.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-jobs")


# ------------------------------------------------------------------------------ the public API, raw
async def create(nc: NATS, spec: dict) -> dict:
    return await request_json(nc, TOPO.jobs("create"), json.dumps(spec).encode(),
                              headers={"Nats-Msg-Id": f"e2e-{uuid.uuid4()}"}, timeout_s=30)


async def get(nc: NATS, job_id: str) -> dict:
    return await request_json(nc, TOPO.jobs("get"), {"id": job_id})


async def events_until_end(nc: NATS, job_id: str, timeout_s: float = 60) -> list[dict]:
    pairs = await read_stream(nc, TOPO.job_events(job_id), until=lambda e: e["data"]["status"] in TERMINAL,
                              timeout_s=timeout_s)
    return [event for _, event in pairs]


def check_cloudevents(events: list[dict], job_id: str) -> None:
    for event in events:
        assert event["specversion"] == "1.0"
        assert event["datacontenttype"] == "application/json"
        assert {"id", "source", "type", "subject", "time", "data"} <= set(event)
        assert event["subject"] == job_id
        assert event["data"]["job_id"] == job_id
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids), f"event ids repeat: {ids}"


# ------------------------------------------------------------------------------ tests
async def test_the_sample_job_runs_end_to_end(stack: RunningStack, nc: NATS, work: Path) -> None:
    name = f"iris-{uuid.uuid4().hex[:6]}"
    spec = iris_job(work, name)
    job = await create(nc, spec)
    assert "error" not in job, job
    assert job["name"] == name and job["version"] == "V001"
    assert job["id"].startswith("job-")
    # create answers once the validator's verdict is in; the scheduler may already have moved on
    assert job["status"] in ("Pending", "Scheduled", "Running", "Succeeded"), job

    events = await events_until_end(nc, job["id"])
    check_cloudevents(events, job["id"])
    assert [e["type"] for e in events] == [
        "tm.job.submitted", "tm.job.pending", "tm.job.scheduled", "tm.job.running", "tm.job.succeeded"]
    assert [e["data"]["status"] for e in events] == ["Initializing", "Pending", "Scheduled", "Running", "Succeeded"]
    assert events[-1]["data"]["exit_code"] == 0

    output = Path(spec["output_path"])
    assert (output / "model.joblib").is_file()
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8
    log_files = sorted(Path(spec["log_path"]).glob("*.log"))  # noqa: ASYNC240
    assert len(log_files) == 1, log_files
    log_text = log_files[0].read_text()
    assert "held-out accuracy" in log_text

    lines = await read_stream_lines(nc, TOPO.logs(job["id"], "0"), until="held-out accuracy")
    assert any("150 rows" in line for line in lines)
    record = await get(nc, job["id"])
    assert (record["status"], record["exit_code"]) == ("Succeeded", 0)

    again = await create(nc, iris_job(work, name))
    assert (again["name"], again["version"]) == (name, "V002")
    assert again["id"] != job["id"]
    assert [e["type"] for e in await events_until_end(nc, again["id"])][-1] == "tm.job.succeeded"


async def read_stream_lines(nc: NATS, subject: str, until: str, timeout_s: float = 30.0) -> list[str]:
    sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
    lines: list[str] = []
    try:
        async def next_line() -> bool:
            msg = await sub.next_msg(timeout=timeout_s)
            lines.append(msg.data.decode())
            return until in lines[-1]

        while not await next_line():
            pass
    finally:
        await sub.unsubscribe()
    return lines


SLEEPER = textwrap.dedent("""
    import time
    print("sleeping", flush=True)
    time.sleep(120)
    print("woke up", flush=True)
""")

FAILER = textwrap.dedent("""
    import sys
    print("about to fail", flush=True)
    print("RuntimeError: the data is bad", file=sys.stderr, flush=True)
    sys.exit(3)
""")


async def test_a_long_job_is_stopped(stack: RunningStack, nc: NATS, work: Path) -> None:
    job = await create(nc, script_job(work, f"sleeper-{uuid.uuid4().hex[:6]}", SLEEPER))
    assert "error" not in job, job
    await read_stream(nc, TOPO.job_events(job["id"]), until=lambda e: e["data"]["status"] == "Running")
    await read_stream_lines(nc, TOPO.logs(job["id"], "0"), until="sleeping")  # it really runs

    reply = await request_json(nc, TOPO.jobs("stop"), {"id": job["id"], "reason": "e2e stop"})
    assert reply["status"] in ("Stopping", "Stopped"), reply
    events = await events_until_end(nc, job["id"], timeout_s=30)
    check_cloudevents(events, job["id"])
    assert [e["type"] for e in events] == [
        "tm.job.submitted", "tm.job.pending", "tm.job.scheduled", "tm.job.running", "tm.job.stopping",
        "tm.job.stopped"]
    record = await get(nc, job["id"])
    assert record["status"] == "Stopped"
    # the entry that stopped it (the biller may have recorded its charge after it already)
    stopped = next(entry for entry in record["history"] if entry["status"] == "Stopped")
    assert stopped["reason"] == "e2e stop"


async def test_a_failing_boot_file_fails_the_job_with_its_exit_code(stack: RunningStack, nc: NATS, work: Path) -> None:
    job = await create(nc, script_job(work, f"failer-{uuid.uuid4().hex[:6]}", FAILER))
    events = await events_until_end(nc, job["id"])
    check_cloudevents(events, job["id"])
    assert events[-1]["type"] == "tm.job.failed"
    assert events[-1]["data"]["exit_code"] == 3
    record = await get(nc, job["id"])
    assert (record["status"], record["exit_code"]) == ("Failed", 3)
    assert "RuntimeError: the data is bad" in record["failure_reason"]
    assert_error(await request_json(nc, TOPO.jobs("stop"), {"id": job["id"]}), "conflict")


async def test_one_trace_follows_a_job_across_the_services(stack: RunningStack, nc: NATS, work: Path) -> None:
    job = await create(nc, iris_job(work, f"traced-{uuid.uuid4().hex[:6]}"))
    await events_until_end(nc, job["id"])
    record = await get(nc, job["id"])
    assert record["traceparent"], "job-intake records the trace of the request"
    trace_id = record["traceparent"].split("-")[1]
    wanted = {"job-intake", "validator", "scheduler", "executor-agent"}

    def services_in_trace() -> dict[str, set[str]]:
        by_trace: dict[str, set[str]] = defaultdict(set)
        if stack.traces.exists():
            for line in stack.traces.read_text().splitlines():
                span = json.loads(line)
                by_trace[span["trace_id"]].add(span["service"])
        return by_trace

    try:
        await eventually(lambda: wanted <= services_in_trace()[trace_id], 10, 0.25,
                         what="spans of every service in the job's trace")
    except AssertionError:
        found = services_in_trace()[trace_id]
        raise AssertionError(f"trace {trace_id} of job {job['id']} has spans of {sorted(found)} only; "
                             f"missing {sorted(wanted - found)}") from None

    # the JSON logs of each service carry the job id and the same trace id
    logged: dict[str, set[str]] = defaultdict(set)
    for child in stack.stack.children:
        for line in child.log_path.read_text().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("job_id") == job["id"]:
                    logged[entry["service"]].add(entry.get("trace_id"))
    assert {service for service, traces in logged.items() if trace_id in traces} >= wanted, dict(logged)



ENV_PRINTER = textwrap.dedent("""\
    import json, os
    print("ENV " + json.dumps(sorted(os.environ)), flush=True)
""")


async def test_the_bus_refuses_anonymous_clients_and_jobs_get_no_credentials(
        stack: RunningStack, nc: NATS, work: Path) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(stack.url, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=0,
                           error_cb=_quiet)
    job = await create(nc, script_job(work, f"env-{uuid.uuid4().hex[:6]}", ENV_PRINTER))
    lines = await read_stream_lines(nc, TOPO.logs(job["id"], "0"), until="ENV ")
    line = next(line for line in lines if "ENV " in line)
    names = json.loads(line[line.index("ENV ") + 4:])
    assert "TM_JOB_ID" in names
    assert not [n for n in names if n.startswith("TM_") and n not in JOB_VARIABLES], names
    events = await events_until_end(nc, job["id"])
    assert events[-1]["type"] == "tm.job.succeeded"


JOB_VARIABLES = {"TM_JOB_ID", "TM_JOB_NAME", "TM_JOB_VERSION", "TM_ATTEMPT"}


async def _quiet(_exc: Exception) -> None:
    """nats-py's default error callback prints a traceback per refused try."""
