"""The HTTP API of ``trainmaster up``: the stack prints where it answers and where the admin's
token is; with that token an operator makes a person, who runs a job of its project over HTTP and
follows its log lines as Server-Sent Events.  The token is made once and kept across restarts."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import httpx
import pytest
from support import eventually, script_job
from up_harness import Up, answering, free_port, printed

pytestmark = pytest.mark.e2e


async def test_the_stack_serves_the_api_to_its_admin_token(stacks, client_of, tmp_path: Path) -> None:
    up = Up(tmp_path / "data", free_port())
    stacks.append(up)
    up.start()
    await up.ready(await client_of(up))
    url, token_file = printed(up)
    assert token_file == up.data_dir.resolve() / "auth" / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    admin = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    await answering(url)

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        me = (await http.get("/whoami", headers=admin)).json()
        assert me["user"] == "admin" and me["cluster_admin"] is True
        assert (await http.post("/accounts/team-a/credit", headers=admin, json={"amount": 100})).status_code == 200
        made = await http.post("/users", headers=admin, json={"name": "alice", "project": "team-a", "role": "member"})
        assert made.status_code == 201, made.text
        alice = {"Authorization": f"Bearer {made.json()['token']}"}

        spec = script_job(tmp_path, f"http-{uuid.uuid4().hex[:6]}", "print('hello over http')\n", account="team-a")
        created = await http.post("/jobs", headers=alice, json=spec)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        async with http.stream("GET", f"/jobs/{job_id}/logs", params={"follow": "true"}, headers=alice) as stream:
            text = (await stream.aread()).decode()
        lines = [json.loads(line.removeprefix("data: ")) for line in text.splitlines()
                 if line.startswith("data: {\"node\"")]
        assert "hello over http" in [line["text"] for line in lines], text
        assert text.rstrip().splitlines()[-2] == "event: end"

        async def succeeded() -> bool:
            return (await http.get(f"/jobs/{job_id}", headers=alice)).json()["status"] == "Succeeded"

        await eventually(succeeded, 60, 0.3, what="the job to succeed")
        assert (await http.get("/jobs", headers={"Authorization": "Bearer tmu_wrong"})).status_code == 401
    await up.interrupt()

    # started again on the same data: the same token still opens the API
    kept = token_file.read_text()
    again = Up(up.data_dir, free_port())
    stacks.append(again)
    again.start()
    await again.ready(await client_of(again))
    assert token_file.read_text() == kept
    url, _ = printed(again)
    await answering(url)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert (await http.get("/whoami", headers=admin)).json()["user"] == "admin"
    await again.interrupt()
