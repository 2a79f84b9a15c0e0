"""The executor agent as a real process against a real nats-server.

The test plays the scheduler: it publishes Assign/Cancel commands on ``tm.agent.control.<agent>``
(JetStream publishes, as the scheduler's) and reads the agent's reports through the
scheduler's own durable consumer, its heartbeats on core NATS and its log lines from the LOGS
stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from agent_harness import (
    AGENT_ID,
    IRIS,
    STOP_GRACE_S,
    TOPO,
    AgentProcess,
    Bus,
    alive,
    assign,
    open_bus,
    script_job,
    start_agent,
)
from support import settled

from trainmaster.bus import publish_js
from trainmaster.messages import Algorithm, Assign, Cancel, DataSource, JobRequest
from trainmaster.natsd import NatsServer

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    server = NatsServer(store_dir=tmp_path / "nats", port=-1)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def agent(nats_url: str, tmp_path: Path) -> Iterator[AgentProcess]:
    handle = start_agent(nats_url, tmp_path)
    yield handle
    handle.terminate()


@pytest.fixture
async def bus(nats_url: str, agent: AgentProcess) -> AsyncIterator[Bus]:
    async with open_bus(nats_url, agent) as connected:
        yield connected


# Sleeps in a child it forks (so the test sees the whole process group stopped); prints the
# child's pid, then "ready".  IGNORE_TERM makes it ignore SIGTERM to exercise the SIGKILL path.
LONG_SCRIPT = """\
    import os, signal, subprocess, sys, time
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(f"child {child.pid}", flush=True)
    print("ready", flush=True)
    time.sleep(120)
"""


# ------------------------------------------------------------------------------ tests
async def test_iris_job_runs_reports_logs_and_stores_the_model(bus: Bus, agent: AgentProcess, tmp_path: Path) -> None:
    hb = bus.heartbeats[-1]
    assert (hb.agent_id, hb.pool, hb.gpus) == (AGENT_ID, "cpu", [])
    assert hb.cpus >= 1 and hb.memory_mb > 0

    spec = JobRequest(
        name="iris-sklearn", data=[DataSource(path=f"file://{IRIS / 'data'}")],
        algorithm=Algorithm(source="framework", engine="scikit-learn", engine_version="1.5",
                            code_dir=str(IRIS / "code"), boot_file="train.py"),
        parameters={"max_iter": 200, "C": 1.0, "verbose": True},
        output_path=str(tmp_path / "outputs" / "iris"), log_path=str(tmp_path / "logs" / "iris"),
    )
    command = Assign(job_id="job-iris", attempt=1, node=0, node_count=1, spec=spec, name="iris-sklearn",
                     version="V001")
    await bus.send(command)

    running = await bus.report("job-iris", "running")
    assert (running.agent_id, running.attempt, running.node) == (AGENT_ID, 1, 0)
    exited = await bus.report("job-iris", "exited")
    assert (exited.exit_code, exited.reason) == (0, None), agent.output()

    lines = await bus.log_lines("job-iris", until="held-out accuracy")
    assert [m.headers["Tm-Line"] for m in lines] == [str(i) for i in range(1, len(lines) + 1)]
    assert all(m.headers["Tm-Stream"] == "stdout" for m in lines)
    # an unknown run parameter is passed on and ignored by the script, not fatal
    assert "--verbose=true" in lines[0].data.decode()

    log_file = tmp_path / "logs" / "iris" / "iris-sklearn-V001-node0.log"
    text = log_file.read_text()
    assert text.startswith("# trainmaster job job-iris") and "attempt 1" in text.splitlines()[0]
    assert "held-out accuracy" in text

    out = tmp_path / "outputs" / "iris"
    assert (out / "model.joblib").stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8 and metrics["n_train"] + metrics["n_test"] == 150
    assert metrics["params"] == {"C": 1.0, "max_iter": 200, "label_column": "species", "test_size": 0.25, "seed": 0}

    # a redelivered Assign of a finished run does not run it again
    seq = await bus.send(command)
    # the agent acked the redelivered Assign: whatever it did with it is done
    await settled(bus.nc, TOPO.stream_agent.name, f"agent-{AGENT_ID}", past_seq=seq)
    assert log_file.read_text().count("# trainmaster job") == 1
    assert "assignment already finished here" in agent.output()


async def test_cancel_stops_the_whole_process_group(bus: Bus, agent: AgentProcess, tmp_path: Path) -> None:
    await bus.send(assign("job-long", script_job(tmp_path, LONG_SCRIPT)))
    await bus.report("job-long", "running")
    lines = await bus.log_lines("job-long", until="ready")
    child_pid = int(lines[0].data.decode().split()[1])
    assert alive(child_pid)
    await bus.heartbeat_with("job-long/0/1")

    started = time.monotonic()
    await bus.send(Cancel(job_id="job-long", reason="user asked"))
    exited = await bus.report("job-long", "exited", timeout_s=30)
    assert exited.exit_code == 128 + signal.SIGTERM
    assert exited.reason == "stopped: user asked"
    assert time.monotonic() - started < STOP_GRACE_S + 10
    assert not alive(child_pid), "the script's child outlived the cancel"
    await bus.heartbeat_with(None)
    # outputs are still copied for a stopped job (here: an empty folder)
    assert (tmp_path / "out").is_dir()


async def test_a_script_that_ignores_sigterm_is_killed_after_the_grace(bus: Bus, tmp_path: Path) -> None:
    spec = script_job(tmp_path, "import os\nos.environ['IGNORE_TERM'] = '1'\n" + textwrap.dedent(LONG_SCRIPT))
    await bus.send(assign("job-stubborn", spec))
    await bus.log_lines("job-stubborn", until="ready")
    started = time.monotonic()
    await bus.send(Cancel(job_id="job-stubborn", reason="enough"))
    exited = await bus.report("job-stubborn", "exited", timeout_s=30)
    assert exited.exit_code == 128 + signal.SIGKILL
    assert exited.reason == "stopped: enough"
    assert time.monotonic() - started >= STOP_GRACE_S - 0.5


async def test_cancel_of_an_unknown_job_is_acknowledged(bus: Bus, agent: AgentProcess) -> None:
    await bus.send(Cancel(job_id="job-nowhere", reason="x"))
    info = None
    for _ in range(50):
        info = await bus.js.consumer_info(TOPO.stream_agent.name, f"agent-{AGENT_ID}")
        if info.num_ack_pending == 0 and info.num_pending == 0 and info.delivered.stream_seq > 0:
            break
        await asyncio.sleep(0.1)
    assert info is not None and info.num_ack_pending == 0 and info.num_pending == 0
    assert agent.proc.poll() is None


async def test_failing_script_reports_its_exit_code_and_last_error(bus: Bus, tmp_path: Path) -> None:
    spec = script_job(tmp_path, """\
        import sys
        print("about to fail", flush=True)
        print("ValueError: the data is bad", file=sys.stderr, flush=True)
        sys.exit(3)
    """)
    await bus.send(assign("job-fail", spec))
    exited = await bus.report("job-fail", "exited")
    assert exited.exit_code == 3
    assert exited.reason == "the boot file exited with code 3: ValueError: the data is bad"
    lines = await bus.log_lines("job-fail", until="the data is bad")
    assert {m.headers["Tm-Stream"] for m in lines} == {"stdout", "stderr"}


async def test_what_the_agent_cannot_run_is_reported_with_a_reason(bus: Bus, tmp_path: Path) -> None:
    preset = JobRequest(name="t", algorithm=Algorithm(source="preset", preset="x"), output_path=str(tmp_path))
    await bus.send(assign("job-preset", preset))
    exited = await bus.report("job-preset", "exited")
    assert exited.exit_code == 2 and "preset" in (exited.reason or ""), exited.reason  # an unknown preset

    custom = JobRequest(name="t", algorithm=Algorithm(source="custom", image="x:1"), output_path=str(tmp_path))
    await bus.send(assign("job-custom", custom))
    exited = await bus.report("job-custom", "exited")
    assert (exited.exit_code, exited.reason) == (2, "a custom-image job needs algorithm.image and algorithm.command")

    unknown = script_job(tmp_path, "print('never')\n")
    unknown = msgspec.structs.replace(unknown, algorithm=msgspec.structs.replace(unknown.algorithm, engine="nope"))
    await bus.send(assign("job-engine", unknown))
    exited = await bus.report("job-engine", "exited")
    assert (exited.exit_code, exited.reason) == (2, "algorithm.engine 'nope' is not in this agent's engine catalog")

    # s3:// is staged; this agent has no S3 endpoint configured that answers: a clear failure, not a hang
    s3 = script_job(tmp_path, "print('never')\n", data=[DataSource(path="s3://bucket/iris")])
    await bus.send(assign("job-s3", s3))
    exited = await bus.report("job-s3", "exited", timeout_s=60)
    assert exited.exit_code in (1, 2) and "staging data[0] s3://bucket/iris failed" in (exited.reason or "")

    missing = script_job(tmp_path, "print('never')\n", data=[DataSource(path=str(tmp_path / "nope"))])
    await bus.send(assign("job-missing", missing))
    exited = await bus.report("job-missing", "exited")
    assert exited.exit_code == 2 and "does not exist" in (exited.reason or "")


async def test_undecodable_command_is_dead_lettered(bus: Bus, agent: AgentProcess) -> None:
    dlq = await bus.js.subscribe(TOPO.dlq(f"agent-{AGENT_ID}"), ordered_consumer=True)
    await publish_js(bus.broker, TOPO.agent_control(AGENT_ID), b'{"type": "reboot"}', stream=TOPO.stream_agent.name)
    msg = await dlq.next_msg(timeout=15)
    assert msg.data == b'{"type": "reboot"}'
    assert msg.headers["Tm-Error"].startswith("poison:")
    assert agent.proc.poll() is None


async def test_agent_shutdown_stops_and_reports_its_nodes(bus: Bus, agent: AgentProcess, tmp_path: Path) -> None:
    await bus.send(assign("job-orphan", script_job(tmp_path, LONG_SCRIPT)))
    lines = await bus.log_lines("job-orphan", until="ready")
    child_pid = int(lines[0].data.decode().split()[1])

    returncode = await asyncio.to_thread(agent.terminate)
    assert returncode == 0, agent.output()
    exited = await bus.report("job-orphan", "exited", timeout_s=10)
    assert (exited.exit_code, exited.reason) == (128 + signal.SIGTERM, "agent stopped")
    assert not alive(child_pid), "the agent left an orphan behind"


async def test_the_boot_file_gets_the_conventional_arguments_and_environment(bus: Bus, tmp_path: Path) -> None:
    first, second = tmp_path / "d1", tmp_path / "d2"
    for folder in (first, second):
        folder.mkdir()
        (folder / "part.csv").write_text("x\n")
    spec = script_job(tmp_path, """\
        import json, os, sys
        names = ["TM_JOB_ID", "TM_JOB_NAME", "TM_JOB_VERSION", "TM_ATTEMPT", "WORLD_SIZE", "RANK",
                 "NODE_RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PYTHONUNBUFFERED"]
        data = sys.argv[1].split("=", 1)[1]
        links = {n: os.path.realpath(os.path.join(data, n)) for n in sorted(os.listdir(data))}
        print("FACTS " + json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "links": links,
                                     "env": {n: os.environ.get(n) for n in names}}))
    """, data=[DataSource(path=str(first)), DataSource(path=f"file://{second}")],
        parameters={"epochs": 3, "lr": 0.5, "shuffle": False, "mode": "fast run"})
    await bus.send(Assign(job_id="job-facts", attempt=2, node=0, node_count=1, spec=spec, name="facts",
                          version="V007"))
    exited = await bus.report("job-facts", "exited")
    assert exited.exit_code == 0, exited.reason
    lines = await bus.log_lines("job-facts", until="FACTS")
    facts = json.loads(lines[-1].data.decode().removeprefix("FACTS "))
    run_dir = tmp_path / "data" / "agents" / AGENT_ID / "runs" / "job-facts" / "a2-n0"
    assert facts["argv"] == [f"--data_url={run_dir / 'input'}", f"--train_url={run_dir / 'output'}",
                             "--epochs=3", "--lr=0.5", "--shuffle=false", "--mode=fast run"]
    assert facts["cwd"] == str(tmp_path / "code")
    assert facts["links"] == {"0": str(first), "1": str(second)}
    env = facts["env"]
    assert {k: env[k] for k in ("TM_JOB_ID", "TM_JOB_NAME", "TM_JOB_VERSION", "TM_ATTEMPT")} == {
        "TM_JOB_ID": "job-facts", "TM_JOB_NAME": "facts", "TM_JOB_VERSION": "V007", "TM_ATTEMPT": "2"}
    assert (env["WORLD_SIZE"], env["RANK"], env["NODE_RANK"], env["LOCAL_RANK"]) == ("1", "0", "0", "0")
    assert env["MASTER_ADDR"] == "127.0.0.1" and int(env["MASTER_PORT"]) > 0
    assert env["PYTHONUNBUFFERED"] == "1"
    assert (tmp_path / "logs" / "facts-V007-node0.log").exists()


async def test_a_cancel_right_behind_its_assign_wins(bus: Bus, tmp_path: Path) -> None:
    # both may land in one fetched batch and be handled concurrently, in either order
    await bus.send(assign("job-race", script_job(tmp_path, LONG_SCRIPT)))
    await bus.send(Cancel(job_id="job-race", reason="changed my mind"))
    exited = await bus.report("job-race", "exited", timeout_s=30)
    assert exited.exit_code == 128 + signal.SIGTERM
    assert (exited.reason or "").startswith("stopped: changed my mind")
    await bus.heartbeat_with(None)


async def test_a_restarted_agent_reports_the_node_it_lost(bus: Bus, agent: AgentProcess, nats_url: str,
                                                          tmp_path: Path) -> None:
    await bus.send(assign("job-lost", script_job(tmp_path, LONG_SCRIPT)))
    await bus.report("job-lost", "running")
    lines = await bus.log_lines("job-lost", until="ready")
    child_pid = int(lines[0].data.decode().split()[1])

    agent.proc.kill()  # no chance to stop its nodes
    agent.proc.wait()
    second = start_agent(nats_url, tmp_path, name="agent-restarted")
    try:
        exited = await bus.report("job-lost", "exited", timeout_s=30)
        assert exited.exit_code == 137  # killed with its agent
        assert (exited.reason or "").startswith("lost:")
        for _ in range(50):
            if not alive(child_pid):
                break
            await asyncio.sleep(0.1)
        assert not alive(child_pid), "what the lost node forked is still running"
    finally:
        second.terminate()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child_pid, signal.SIGKILL)


async def test_every_line_of_a_chatty_script_is_published_in_order(bus: Bus, tmp_path: Path) -> None:
    count = 5000
    spec = script_job(tmp_path, f"""\
        import sys
        for i in range({count}):
            print(f"line {{i}}")
            if i % 1000 == 0:
                print(f"err {{i}}", file=sys.stderr)
        print("x" * 40000)  # one overlong line: cut into several messages, not refused
    """)
    started = time.monotonic()
    await bus.send(assign("job-chatty", spec))
    exited = await bus.report("job-chatty", "exited")
    assert exited.exit_code == 0, exited.reason
    # "exited" is only sent once the logs are flushed: everything is in the stream already
    info = await bus.js.stream_info(TOPO.stream_logs.name, subjects_filter=TOPO.logs("job-chatty", "0"))
    assert info.state.messages == count + 5 + 3
    lines = await bus.log_lines("job-chatty", until="xxxx", count=count + 5 + 3)
    # numbered in the order the agent read them; stdout and stderr interleave as they were read
    assert [int(m.headers["Tm-Line"]) for m in lines] == list(range(1, count + 5 + 3 + 1))
    stdout = [m.data.decode() for m in lines if m.headers["Tm-Stream"] == "stdout"]
    assert stdout[:count] == [f"line {i}" for i in range(count)]
    assert "".join(stdout[count:]) == "x" * 40000
    assert time.monotonic() - started < 30
    text = (tmp_path / "logs" / "t-V001-node0.log").read_text().splitlines()
    assert len(text) == 1 + count + 5 + 3
    assert [line for line in text if line.startswith("line ")] == [f"line {i}" for i in range(count)]
