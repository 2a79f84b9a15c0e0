"""A team shares one ``trainmaster up`` stack, through the commands and the public subjects only:
the local admin creates people with the CLI, each connects with the creds file it got (plain
nats-py, and the CLI with ``TM_NATS_CREDS``), runs and reads the jobs of its own project and
nothing of another's; a revoked person is cut off by nats-server itself within seconds."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from support import REPO, eventually, script_job
from up_harness import CLI, Up, free_port

from trainmaster.auth.permissions import user_inbox
from trainmaster.topology import Topology

pytestmark = pytest.mark.e2e
TOPO = Topology()
CREATED_KEYS = {"user", "project", "role", "nats_url", "creds", "token"}


def cli(up: Up, *args: str, creds: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    env.update(TM_DATA_DIR=str(up.data_dir), TM_NATS_URL=up.url, COLUMNS="200")
    if creds is not None:
        env["TM_NATS_CREDS"] = str(creds)
    return subprocess.run([CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def create_user(up: Up, name: str, project: str, role: str, folder: Path) -> dict:
    done = cli(up, "user", "create", name, "--project", project, "--role", role, "--json",
               "--out", str(folder / f"{name}.creds"))
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert set(made) == CREATED_KEYS and made["nats_url"] == up.url
    assert stat.S_IMODE(Path(made["creds"]).stat().st_mode) == 0o600
    return made


async def ask(nc: NATS, subject: str, body: dict) -> dict:
    return json.loads((await nc.request(subject, json.dumps(body).encode(), timeout=15)).data)


async def test_people_of_two_projects_share_a_stack(stacks, client_of, tmp_path: Path) -> None:
    up = Up(tmp_path / "data", free_port())
    stacks.append(up)
    up.start()
    await up.ready(await client_of(up))

    for project in ("team-a", "team-b"):  # the projects: accounts with money to run on
        credited = cli(up, "account", "credit", project, "100")
        assert credited.returncode == 0, credited.stderr
    alice = create_user(up, "alice", "team-a", "member", tmp_path)
    bob = create_user(up, "bob", "team-b", "member", tmp_path)
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    # the documented way for a client that knows nothing of this code: its creds and its inbox prefix
    as_alice = await nats.connect(up.url, user_credentials=alice["creds"], inbox_prefix=user_inbox("alice"),
                                  closed_cb=on_closed, max_reconnect_attempts=3, reconnect_time_wait=0.2)
    as_bob = await nats.connect(up.url, user_credentials=bob["creds"], inbox_prefix=user_inbox("bob"))
    try:
        spec = script_job(tmp_path, f"team-{uuid.uuid4().hex[:6]}", "print('hello from team-a')\n",
                          account="team-a")
        job = await ask(as_alice, TOPO.jobs("create"), spec)
        assert "id" in job, job

        async def succeeded() -> bool:
            return (await ask(as_alice, TOPO.jobs("get"), {"id": job["id"]})).get("status") == "Succeeded"

        await eventually(succeeded, 90, 0.3, what="alice's job to succeed")

        # bob sees nothing of team-a, and may not act for it
        missing = await ask(as_bob, TOPO.jobs("get"), {"id": job["id"]})
        assert missing["error"]["code"] == "not_found"
        assert (await ask(as_bob, TOPO.jobs("list"), {}))["total"] == 0
        refused = await ask(as_bob, TOPO.jobs("create"), {**spec, "name": "not-mine"})
        assert refused["error"]["code"] == "forbidden"
        credited = await ask(as_bob, TOPO.accounts("credit"), {"name": "team-b", "amount": 1e12})
        assert credited["error"]["code"] == "forbidden"

        # the CLI as alice: her creds file, nothing else
        listed = cli(up, "job", "list", "--json", creds=Path(alice["creds"]))
        assert listed.returncode == 0, listed.stderr
        assert job["id"] in listed.stdout
        logs = cli(up, "job", "logs", job["id"], creds=Path(alice["creds"]))  # tm.jobs.logs, across accounts
        assert logs.returncode == 0 and "hello from team-a" in logs.stdout, logs.stderr
        hidden = cli(up, "job", "logs", job["id"], creds=Path(bob["creds"]))
        assert hidden.returncode == 1 and "hello" not in hidden.stdout

        # revoked: the server closes her connection and refuses her from then on; bob carries on
        revoked = cli(up, "user", "revoke", "alice")
        assert revoked.returncode == 0, revoked.stderr
        await asyncio.wait_for(closed.wait(), 15)
        again = cli(up, "job", "list", creds=Path(alice["creds"]))
        assert again.returncode == 3 and "refused this client" in again.stderr, again.stderr
        assert (await ask(as_bob, TOPO.jobs("list"), {}))["total"] == 0
    finally:
        await as_bob.close()
        if not as_alice.is_closed:
            await as_alice.close()
    await up.interrupt()
