"""An agent killed (SIGKILL) while its job runs, then restarted: it does not re-attach (the node's
pipes died with it) — it kills what is left of the node, reports it lost, and the scheduler ends the
job.  Real job-intake, validator, scheduler and agent processes; nothing stays Running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import textwrap
import uuid
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from support import Services, eventually, read_stream, request_json, script_job

from trainmaster.topology import Topology

pytestmark = pytest.mark.integration

TOPO = Topology()
AGENT = {"TM_AGENT_ID": "restart-1", "TM_HEARTBEAT_INTERVAL_S": "0.5"}

SLEEPER = textwrap.dedent("""
    import os, time
    print(f"pid {os.getpid()}", flush=True)
    time.sleep(300)
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


async def test_a_killed_and_restarted_agent_reports_its_node_lost_and_the_job_ends(
        nats_server: str, nc: NATS, services: Services, tmp_path: Path) -> None:
    await services.astart(nats_server, "job_intake", "validator", "scheduler")
    (agent,) = await services.astart(nats_server, "executor_agent", env=AGENT)
    spec = script_job(tmp_path, f"sleeper-{uuid.uuid4().hex[:6]}", SLEEPER)
    job = await request_json(nc, TOPO.jobs("create"), json.dumps(spec).encode(), timeout_s=30)
    assert "error" not in job, job
    await read_stream(nc, TOPO.job_events(job["id"]), until=lambda e: e["data"]["status"] == "Running")
    sub = await nc.jetstream().subscribe(TOPO.logs(job["id"], "0"), ordered_consumer=True)
    pid = int((await sub.next_msg(timeout=20)).data.decode().split()[1])
    await sub.unsubscribe()

    agent.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(agent.proc.wait)
    await services.astart(nats_server, "executor_agent", env=AGENT)

    pairs = await read_stream(nc, TOPO.job_events(job["id"]),
                              until=lambda e: e["data"]["status"] in ("Failed", "Succeeded", "Stopped"))
    final = pairs[-1][1]["data"]
    assert final["status"] == "Failed", final
    assert final["exit_code"] == 137 and final["reason"].startswith("lost: the agent restarted while this node ran")
    await eventually(lambda: not alive(pid), 10, 0.1, what="the lost node's process to be killed")
    record = await request_json(nc, TOPO.jobs("get"), {"id": job["id"]})
    assert record["status"] == "Failed"
