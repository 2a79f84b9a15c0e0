"""``trainmaster up`` as a user runs it: the real command in a subprocess, on a temporary data
directory and a free port, watched from outside through its process tree and the public client.

- a SIGKILLed nats-server is reaped and started again (same port, same store): a job that ran
  through the outage and a job submitted after it both succeed;
- Ctrl-C (SIGINT) stops the whole tree (services, agents, job processes, nats-server) in under 5 s,
  even with a job that ignores SIGTERM and has a child of its own;
- a stack started again on the same data directory carries on the jobs the old one left running
  or queued, until each ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import uuid
from pathlib import Path

import pytest
from nats.errors import Error as NatsError
from support import eventually, script_job
from up_harness import Up, free_port, proc_stat

from trainmaster.client import ApiError, Client

pytestmark = pytest.mark.e2e

TERMINAL = {"Succeeded", "Failed", "Stopped"}
SHUTDOWN_LIMIT_S = 5.0

# waits until the file named by its first argument exists: a job that runs for as long as the
# test wants, whatever happens around it
WAIT_FOR_FILE = textwrap.dedent("""
    import pathlib, sys, time
    go = pathlib.Path(sys.argv[0]).with_name("go")
    print("waiting for", go, flush=True)
    while not go.exists():
        time.sleep(0.1)
    print("done", flush=True)
""")

# the worst case for a shutdown: ignores SIGTERM, and has a child (in its process group) that does too
STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print("child", child.pid, flush=True)
    time.sleep(600)
""")


async def status_of(client: Client, job_id: str) -> dict | None:
    """The job's record, or None while the bus or a service is not there (a restart)."""
    with contextlib.suppress(NatsError, TimeoutError, ApiError):
        return await client.get(job_id)
    return None


async def wait_status(client: Client, job_id: str, wanted: set[str], timeout_s: float = 60.0) -> dict:
    async def reached() -> dict | None:
        record = await status_of(client, job_id)
        return record if record is not None and record["status"] in wanted else None

    return await eventually(reached, timeout_s, 0.2, what=f"job {job_id} to be {sorted(wanted)}")


async def create(client: Client, spec: dict) -> dict:
    job = await client.create(spec, request_id=f"e2e-{uuid.uuid4()}")
    assert "error" not in job, job
    return job


async def first_line_with(client: Client, job_id: str, text: str) -> str:
    lines = client.logs(job_id, follow=True)
    try:
        async for _, line in lines:
            if text in line:
                return line
    finally:
        await lines.aclose()
    raise AssertionError(f"job {job_id} ended without a log line with {text!r}")


def waiting_job(work: Path, **overrides) -> tuple[dict, Path]:
    """A job that runs until its ``go`` file exists; and that file."""
    name = f"wait-{uuid.uuid4().hex[:6]}"
    spec = script_job(work, name, WAIT_FOR_FILE, **overrides)
    return spec, Path(spec["algorithm"]["code_dir"]) / "go"


def quick_job(work: Path) -> dict:
    return script_job(work, f"quick-{uuid.uuid4().hex[:6]}", "print('quick', flush=True)\n")


# ------------------------------------------------------------------------------ tests
async def test_a_killed_nats_server_is_restarted_and_jobs_carry_on(stacks, client_of, tmp_path: Path) -> None:
    up = Up(tmp_path / "data", free_port(), agents=2)
    stacks.append(up)
    up.start()
    client = await client_of(up)
    await up.ready(client)
    running_spec, go = waiting_job(tmp_path / "work")
    running = await create(client, running_spec)
    await wait_status(client, running["id"], {"Running"})

    old = up.nats_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    # reaped (no zombie left) and started again, on the same port
    await eventually(lambda: proc_stat(old) is None, 10, 0.05, what="the killed nats-server to be reaped")
    await eventually(lambda: (pid := up.nats_pid()) is not None and pid != old, 20, 0.05,
                     what="a new nats-server")
    assert not up.failed(), up.output()

    # every service reconnects: a job submitted now runs to the end
    async def created() -> dict | None:
        # while job-intake's JetStream calls still fail it answers with an error: a client retries
        with contextlib.suppress(NatsError, TimeoutError, ApiError):
            return await create(client, quick_job(tmp_path / "work"))
        return None

    after = await eventually(created, 30, 0.5, what="job-intake to take a job again")
    record = await wait_status(client, after["id"], TERMINAL)
    assert record["status"] == "Succeeded", record
    # and the job that ran through the outage finishes too
    go.touch()
    record = await wait_status(client, running["id"], TERMINAL)
    assert record["status"] == "Succeeded", record
    assert "nats-server exited with -9; restarting it" in up.output()

    took, _ = await up.interrupt()
    assert took < SHUTDOWN_LIMIT_S, f"the stack took {took:.1f} s to stop"


async def test_ctrl_c_stops_the_whole_tree_within_5_s(stacks, client_of, tmp_path: Path) -> None:
    up = Up(tmp_path / "data", free_port())
    stacks.append(up)
    up.start()
    client = await client_of(up)
    await up.ready(client)
    job = await create(client, script_job(tmp_path / "work", f"stubborn-{uuid.uuid4().hex[:6]}", STUBBORN))
    await wait_status(client, job["id"], {"Running"})
    grandchild = int((await first_line_with(client, job["id"], "child")).split()[-1])
    assert proc_stat(grandchild) is not None
    assert up.nats_pid() is not None

    took, pgids = await up.interrupt()
    assert took < SHUTDOWN_LIMIT_S, f"the stack took {took:.1f} s to stop; its output:\n{up.output()}"
    # each in a group of its own: the supervisor, 4 services, the agent, nats-server, the job
    assert len(pgids) >= 8, pgids
    assert proc_stat(grandchild) is None or proc_stat(grandchild)[0] == "Z"
    assert up.proc is not None and up.proc.returncode == 0, up.output()


async def test_a_restarted_stack_carries_on_its_jobs(stacks, client_of, tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    # one CPU: the second job waits in the queue while the first runs
    first = Up(data_dir, port, env={"TM_AGENT_CPUS": "1"})
    stacks.append(first)
    first.start()
    client = await client_of(first)
    await first.ready(client)
    spec, go = waiting_job(tmp_path / "work", retry={"max_retries": 1})
    running = await create(client, spec)
    await wait_status(client, running["id"], {"Running"})
    queued_spec, queued_go = waiting_job(tmp_path / "work")
    queued = await create(client, queued_spec)
    assert (await client.get(queued["id"]))["status"] == "Pending"

    took, _ = await first.interrupt()
    assert took < SHUTDOWN_LIMIT_S
    go.touch()
    queued_go.touch()

    second = Up(data_dir, port, env={"TM_AGENT_CPUS": "1"})
    stacks.append(second)
    second.start()
    client = await client_of(second)
    await second.ready(client)
    # the node stopped with the old stack exited 143 (SIGTERM): retried by the job's policy
    record = await wait_status(client, running["id"], TERMINAL, timeout_s=90)
    assert record["status"] == "Succeeded", record
    assert record["attempt"] == 2, record
    record = await wait_status(client, queued["id"], TERMINAL, timeout_s=60)
    assert record["status"] == "Succeeded", record
    took, _ = await second.interrupt()
    assert took < SHUTDOWN_LIMIT_S
