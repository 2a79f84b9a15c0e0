"""A node held to its flavor by a cgroup of its own, proven with real jobs against a real agent:
memory past the flavor is an out-of-memory exit (137) the agent survives, a fork bomb meets the
process limit, nothing a job starts (``setsid``, a double-forked daemon) outlives a stop, its end
or its agent, the CPU quota is the flavor's, and a job that fills the disk is stopped.

These need cgroups (root, v1 or v2), as on the project's machines and CI: the agent runs with
``TM_AGENT_CGROUPS=required``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_harness import AGENT_ID, AgentProcess, Bus, alive, assign, open_bus, script_job, start_agent

from trainmaster.cgroups import CgroupHost, Limits, detect_layout, node_name, tree_name
from trainmaster.messages import Cancel, Resources
from trainmaster.natsd import NatsServer

pytestmark = pytest.mark.integration

PIDS_MAX = 64
DISK_MAX = 8 * 1024 * 1024
LIMITS_ENV = {"TM_AGENT_CGROUPS": "required", "TM_AGENT_NODE_PIDS_MAX": str(PIDS_MAX),
              "TM_AGENT_NODE_DISK_MAX_BYTES": str(DISK_MAX), "TM_AGENT_NODE_DISK_CHECK_S": "0.2"}


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    server = NatsServer(store_dir=tmp_path / "nats", port=-1)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def agent(nats_url: str, tmp_path: Path) -> Iterator[AgentProcess]:
    handle = start_agent(nats_url, tmp_path, env=LIMITS_ENV)
    yield handle
    handle.terminate()


@pytest.fixture
async def bus(nats_url: str, agent: AgentProcess) -> AsyncIterator[Bus]:
    async with open_bus(nats_url, agent) as connected:
        yield connected


def agent_cgroups(agent: AgentProcess) -> CgroupHost:
    """The agent's groups, found as the agent finds them (it runs in this process's groups)."""
    layout = detect_layout(Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text(),
                           lambda path: path.read_text())
    workdir = Path(os.path.abspath(agent.data_dir / "agents" / AGENT_ID))
    return CgroupHost(layout, tree_name(AGENT_ID, workdir))


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    if alive(int(entry.name)):
                        found.append(int(entry.name))
    return found


async def gone(pids: list[int], timeout_s: float = 5.0) -> bool:
    for _ in range(int(timeout_s * 10)):
        if not any(alive(pid) for pid in pids):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_memory_past_the_flavor_is_out_of_memory_and_the_agent_runs_the_next_job(
        bus: Bus, agent: AgentProcess, tmp_path: Path) -> None:
    # the default flavor (cpu.small) has 1 GiB
    spec = script_job(tmp_path, """\
        print("allocating", flush=True)
        hog = b"x" * (1536 * 1024 * 1024)
        print("survived", len(hog), flush=True)
    """)
    await bus.send(assign("job-hog", spec))
    exited = await bus.report("job-hog", "exited", timeout_s=60)
    assert exited.exit_code == 137
    assert exited.reason == "out of memory: the node used its flavor's 1 GiB (memory.max)"
    assert agent.proc.poll() is None

    await bus.send(assign("job-after", script_job(tmp_path, "print('fine')\n")))
    after = await bus.report("job-after", "exited", timeout_s=60)
    assert (after.exit_code, after.reason) == (0, None)


async def test_a_fork_bomb_meets_the_process_limit(bus: Bus, agent: AgentProcess, tmp_path: Path) -> None:
    spec = script_job(tmp_path, """\
        import os, time
        forked = 0
        try:
            while True:
                if os.fork() == 0:
                    try:
                        while True:  # every child forks on too
                            if os.fork() == 0:
                                time.sleep(300)
                    except OSError:
                        time.sleep(300)
                forked += 1
        except OSError as exc:
            print(f"fork refused after {forked}: {exc}", flush=True)
            raise SystemExit(3)
    """)
    await bus.send(assign("job-bomb", spec))
    exited = await bus.report("job-bomb", "exited", timeout_s=60)
    assert exited.exit_code == 3
    assert "fork refused" in (exited.reason or "") or exited.reason == "the boot file exited with code 3"
    # the node's end took every process of it along
    assert not processes_with("job-bomb") and agent.proc.poll() is None
    await bus.send(assign("job-after-bomb", script_job(tmp_path, "print('fine')\n")))
    assert (await bus.report("job-after-bomb", "exited", timeout_s=60)).exit_code == 0


ESCAPING_SCRIPT = """\
    import os, subprocess, sys, time
    detached = subprocess.Popen(["setsid", "sleep", "{seconds}1"], stdout=subprocess.DEVNULL)
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # a daemon: double fork, own session
        os.setsid()
        if os.fork() == 0:
            os.write(write_end, str(os.getpid()).encode())
            os.execvp("sleep", ["sleep", "{seconds}2"])
        os._exit(0)
    os.close(write_end)
    daemon = int(os.read(read_end, 32))
    print(f"escaped {{detached.pid}} {{daemon}}", flush=True)
    print("ready", flush=True)
    time.sleep({stay})
"""


async def escapees(bus: Bus, job_id: str) -> list[int]:
    lines = await bus.log_lines(job_id, until="ready")
    pids = [int(word) for word in lines[0].data.decode().split()[1:]]
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    return pids


async def test_a_stop_kills_what_escaped_the_process_group(bus: Bus, agent: AgentProcess, tmp_path: Path) -> None:
    await bus.send(assign("job-escape", script_job(tmp_path, ESCAPING_SCRIPT.format(seconds=30, stay=300))))
    await bus.report("job-escape", "running")
    pids = await escapees(bus, "job-escape")
    try:
        await bus.send(Cancel(job_id="job-escape", reason="user asked"))
        exited = await bus.report("job-escape", "exited", timeout_s=30)
        assert exited.exit_code == 128 + signal.SIGTERM
        assert await gone(pids), "a process of the stopped job survived"
        assert not processes_with("sleep 301") and not processes_with("sleep 302")
        assert not agent_cgroups(agent).leftovers(), "the node's cgroup was not removed"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_node_that_ends_leaves_nothing_running(bus: Bus, agent: AgentProcess, tmp_path: Path) -> None:
    await bus.send(assign("job-leaver", script_job(tmp_path, ESCAPING_SCRIPT.format(seconds=31, stay=0))))
    pids = await escapees(bus, "job-leaver")
    try:
        exited = await bus.report("job-leaver", "exited", timeout_s=30)
        assert exited.exit_code == 0
        assert await gone(pids), "a daemon of the finished job survived"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_restarted_agent_kills_what_its_lost_node_left(bus: Bus, agent: AgentProcess, nats_url: str,
                                                                tmp_path: Path) -> None:
    await bus.send(assign("job-orphan", script_job(tmp_path, ESCAPING_SCRIPT.format(seconds=32, stay=300))))
    pids = await escapees(bus, "job-orphan")
    agent.proc.kill()  # no chance to stop its nodes
    agent.proc.wait()
    assert all(alive(pid) for pid in pids)  # out of reach of the death signal
    second = start_agent(nats_url, tmp_path, name="agent-restarted", env=LIMITS_ENV)
    try:
        exited = await bus.report("job-orphan", "exited", timeout_s=30)
        assert exited.exit_code == 137 and (exited.reason or "").startswith("lost:")
        assert await gone(pids), "what the lost node started is still running"
        assert not agent_cgroups(agent).leftovers()
    finally:
        second.terminate()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_the_group_has_the_flavors_cpus_memory_and_process_limit(bus: Bus, agent: AgentProcess,
                                                                       tmp_path: Path) -> None:
    spec = script_job(tmp_path, "import time\nprint('ready', flush=True)\ntime.sleep(300)\n",
                      resources=Resources(flavor="cpu.medium"))  # 2 CPUs, 4 GiB
    await bus.send(assign("job-quota", spec))
    await bus.log_lines("job-quota", until="ready")
    cgroups = agent_cgroups(agent)
    group = cgroups.group(node_name("job-quota", 1, 0), Limits(None, None, 0))  # read only
    cpus = min(2, os.cpu_count() or 1)
    if cgroups.layout.version == 2:
        assert group.read("cpu", "cpu.max").split() == [str(cpus * 100_000), "100000"]
        assert group.read("memory", "memory.max").strip() == str(4096 * 1024 * 1024)
    else:
        assert int(group.read("cpu", "cpu.cfs_quota_us")) == cpus * int(group.read("cpu", "cpu.cfs_period_us"))
        assert int(group.read("memory", "memory.limit_in_bytes")) == 4096 * 1024 * 1024
    assert group.read("pids", "pids.max").strip() == str(PIDS_MAX)
    await bus.send(Cancel(job_id="job-quota", reason="seen"))
    assert (await bus.report("job-quota", "exited", timeout_s=30)).exit_code == 128 + signal.SIGTERM


async def test_a_node_that_fills_the_disk_is_stopped(bus: Bus, agent: AgentProcess, tmp_path: Path) -> None:
    spec = script_job(tmp_path, """\
        import os, sys, time
        train_url = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--train_url="))
        with open(os.path.join(train_url, "big.bin"), "wb") as out:
            for _ in range(64):
                out.write(os.urandom(1024 * 1024))
                out.flush()
                os.fsync(out.fileno())
        print("written", flush=True)
        time.sleep(300)
    """)
    await bus.send(assign("job-disk", spec))
    exited = await bus.report("job-disk", "exited", timeout_s=60)
    assert exited.exit_code == 128 + signal.SIGTERM
    assert (exited.reason or "").startswith("disk limit exceeded")
    assert agent.proc.poll() is None
