"""A job's events and logs for people: ``tm.jobs.events`` / ``tm.jobs.logs`` answered by job-intake
on a secured bus as streamed replies to a person of the people's account (who has no JetStream),
after checking that the person may see the job.  The job is made by the cluster admin and stays
Pending (no scheduler); its log lines are written into the log stream by the admin, as an agent
writes them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from people_fixtures import TOPO, PeopleStack, people  # noqa: F401
from support import assert_error, call, iris_job, unique

from trainmaster.access import Credential, UserRecord
from trainmaster.client import ApiError, Client
from trainmaster.messages import encode

pytestmark = pytest.mark.integration


async def pending_job(admin: NATS, tmp_path: Path, project: str) -> str:
    await call(admin, TOPO.accounts("credit"), {"name": project, "amount": 50})
    job = await call(admin, TOPO.jobs("create"), iris_job(tmp_path, unique("feed"), account=project),
                     headers={"Nats-Msg-Id": unique("create")})
    assert job.get("status") == "Pending", job
    return job["id"]


async def write_line(admin: NATS, job_id: str, number: int, text: str, node: int = 0,
                     stream: str = "stdout") -> None:
    await admin.jetstream().publish(TOPO.logs(job_id, str(node)), text.encode(), stream=TOPO.stream_logs.name,
                                    headers={"Tm-Stream": stream, "Tm-Line": str(number)})


def client_on(nc: NATS) -> Client:
    """The public client on a connection made as someone (a person's own inbox prefix)."""
    client = Client(f"(connected as {nc.connected_url})", prefix=TOPO.prefix, timeout=10)
    client.nc = nc
    return client


async def replies(nc: NATS, verb: str, body: dict, quiet_s: float = 1.0) -> list[Msg]:
    """Every message answering one request, until ``Tm-End`` or ``quiet_s`` of silence."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(TOPO.jobs(verb), json.dumps(body).encode(), reply=inbox)
    got: list[Msg] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=quiet_s if got else 10)
            got.append(msg)
            if "Tm-End" in (msg.headers or {}):
                return got
    except TimeoutError:
        return got
    finally:
        await sub.unsubscribe()


async def test_a_viewer_reads_a_job_s_events_and_logs_and_follows_them(people: PeopleStack,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    admin = await people.admin()
    job_id = await pending_job(admin, tmp_path, "team-a")
    for n in (1, 2):
        await write_line(admin, job_id, n, f"line {n}")
    await write_line(admin, job_id, 1, "other node", node=1, stream="stderr")
    alice = await people.person("alice", {"team-a": "viewer"})

    events = await replies(alice, "events", {"id": job_id})
    assert [json.loads(m.data)["data"]["status"] for m in events[:-1]][-1] == "Pending"
    assert events[-1].headers == {"Tm-End": "done"} and events[-1].data == b""
    seqs = [int(m.headers["Tm-Seq"]) for m in events[:-1]]
    assert seqs == sorted(seqs) and events[0].headers["Tm-Job-Status"]

    logs = await replies(alice, "logs", {"id": job_id})
    assert [(m.headers["Tm-Node"], m.headers["Tm-Stream"], m.headers["Tm-Line"], m.data) for m in logs[:-1]] == [
        ("0", "stdout", "1", b"line 1"), ("0", "stdout", "2", b"line 2"), ("1", "stderr", "1", b"other node")]
    assert logs[-1].headers == {"Tm-End": "done"}
    one_node = await replies(alice, "logs", {"id": job_id, "node": 0, "tail": 1})
    assert [m.data for m in one_node[:-1]] == [b"line 2"]
    after_first = await replies(alice, "logs", {"id": job_id, "after": int(logs[0].headers["Tm-Seq"])})
    assert [m.data for m in after_first[:-1]] == [b"line 2", b"other node"]

    # following: a line written after the request comes; stopping the job ends both feeds
    client = client_on(alice)
    lines = client.log_lines(job_id, follow=True, node=0)
    assert [(await anext(lines)).text for _ in range(2)] == ["line 1", "line 2"]
    followed_events = [e async for e in client.events(job_id, follow=False)]
    assert followed_events[-1]["data"]["status"] == "Pending"
    event_feed = asyncio.ensure_future(_statuses(client, job_id))
    await write_line(admin, job_id, 3, "written later")
    late = await asyncio.wait_for(anext(lines), 10)
    assert (late.node, late.stream, late.text) == ("0", "stdout", "written later")
    assert not event_feed.done()
    stopped = await call(admin, TOPO.jobs("stop"), {"id": job_id, "reason": "enough"})
    assert stopped["status"] == "Stopped", stopped
    statuses = await asyncio.wait_for(event_feed, 15)
    assert statuses[-1] == "Stopped" and "Pending" in statuses
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(lines), 15)


async def _statuses(client: Client, job_id: str) -> list[str]:
    return [event["data"]["status"] async for event in client.events(job_id)]


async def test_a_job_of_another_project_is_not_found_and_nothing_else(people: PeopleStack,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    admin = await people.admin()
    job_id = await pending_job(admin, tmp_path, "team-a")
    await write_line(admin, job_id, 1, "secret")
    bob = await people.person("bob", {"team-b": "member"})
    for verb, follow in (("events", False), ("logs", False), ("logs", True), ("events", True)):
        answer = await replies(bob, verb, {"id": job_id, "follow": follow}, quiet_s=1.5)
        assert len(answer) == 1, [m.data for m in answer]
        error = assert_error(json.loads(answer[0].data), "not_found")
        missing = assert_error(json.loads((await replies(bob, verb, {"id": "job-missing"}))[0].data), "not_found")
        assert error["message"].replace(job_id, "?") == missing["message"].replace("job-missing", "?")
        assert error["details"] == missing["details"]
    with pytest.raises(ApiError) as refused:
        [line async for line in client_on(bob).log_lines(job_id)]
    assert refused.value.code == "not_found"
    bad = await replies(bob, "logs", {"id": job_id, "lines": 3})
    assert len(bad) == 1 and json.loads(bad[0].data)["error"]["code"] == "invalid_request"


async def test_a_revoked_person_s_follow_stops(people: PeopleStack, tmp_path: Path) -> None:  # noqa: F811
    admin = await people.admin()
    job_id = await pending_job(admin, tmp_path, "team-a")
    await write_line(admin, job_id, 1, "before")
    creds, key = await people.add_user("carol", {"team-a": "viewer"})
    carol = await people.connect_as("carol", creds)
    lines = client_on(carol).log_lines(job_id, follow=True)
    assert (await anext(lines)).text == "before"

    revoked = UserRecord("carol", time.time(), roles={"team-a": "viewer"},
                         credentials=[Credential("cred-carol", "nats", time.time(), public_key=key,
                                                 revoked_at=time.time())])
    await (await admin.jetstream().key_value(TOPO.bucket_users.name)).put("carol", encode(revoked))
    with pytest.raises(ApiError) as refused:
        await asyncio.wait_for(anext(lines), 10)
    assert refused.value.code == "unauthorized"
    await write_line(admin, job_id, 2, "after")  # not relayed: the feed has ended


async def test_a_long_follow_goes_on_in_windows_with_keepalives_between(people: PeopleStack,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    for svc in [s for s in people.services.started if s.module == "job_intake"]:
        svc.terminate()
    await people.services.astart(people.url, "job_intake", env={
        "TM_NATS_CREDS": str(people.service_creds), "TM_FOLLOW_WINDOW_S": "3", "TM_FOLLOW_KEEPALIVE_S": "0.5"})
    admin = await people.admin()
    job_id = await pending_job(admin, tmp_path, "team-a")
    await write_line(admin, job_id, 1, "first")
    alice = await people.person("alice", {"team-a": "viewer"})

    window = await replies(alice, "logs", {"id": job_id, "follow": True})
    assert window[0].data == b"first"
    keepalives = [m for m in window if m.headers.get("Tm-Keepalive") == "1"]
    assert len(keepalives) >= 3 and all(m.data == b"" for m in keepalives)
    assert window[-1].headers == {"Tm-End": "more", "Tm-Next": window[0].headers["Tm-Seq"]}

    lines = client_on(alice).log_lines(job_id, follow=True)
    assert (await anext(lines)).text == "first"
    await asyncio.sleep(4)  # past the first window: the client has asked again from where it got
    await write_line(admin, job_id, 2, "second")
    assert (await asyncio.wait_for(anext(lines), 10)).text == "second"
    await lines.aclose()


async def test_a_long_log_comes_in_batches_quickly_to_the_cluster_admin(people: PeopleStack,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    admin = await people.admin()
    job_id = await pending_job(admin, tmp_path, "team-a")
    count = 10_000
    for n in range(1, count + 1):  # stored as the agent stores them (the stream takes core publishes)
        await admin.publish(TOPO.logs(job_id, "0"), f"chatty line {n:08d}".encode(),
                            headers={"Tm-Stream": "stdout", "Tm-Line": str(n)})
    await admin.flush()
    await asyncio.sleep(0.5)
    started = time.monotonic()
    got = [line async for line in client_on(admin).log_lines(job_id)]
    elapsed = time.monotonic() - started
    assert [line.text for line in got] == [f"chatty line {n:08d}" for n in range(1, count + 1)]
    assert elapsed < 10, f"{count} lines took {elapsed:.1f} s"
    last = [line.text async for line in client_on(admin).log_lines(job_id, tail=3)]
    assert last == [f"chatty line {n:08d}" for n in range(count - 2, count + 1)]


async def trainmaster(people: PeopleStack, *args: str) -> tuple[int, str]:  # noqa: F811
    """The ``trainmaster`` command as the cluster admin: its exit code and its output."""
    env = {**os.environ, "TM_NATS_URL": people.url, "TM_NATS_CREDS": str(people.admin_creds), "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(str(Path(sys.executable).parent / "trainmaster"), *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_the_command_shows_logs_and_watches_a_job_through_the_verbs(people: PeopleStack,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    admin = await people.admin()
    job_id = await pending_job(admin, tmp_path, "team-a")
    await write_line(admin, job_id, 1, "hello")
    await write_line(admin, job_id, 1, "from node one", node=1)
    code, out = await trainmaster(people, "job", "logs", job_id)
    assert (code, out) == (0, "node 0 | hello\nnode 1 | from node one\n")
    code, out = await trainmaster(people, "job", "logs", "job-missing")
    assert code == 1 and "not_found" in out

    watch = asyncio.ensure_future(trainmaster(people, "job", "watch", job_id))
    await asyncio.sleep(3)
    await write_line(admin, job_id, 2, "while watched")
    await call(admin, TOPO.jobs("stop"), {"id": job_id})
    code, out = await asyncio.wait_for(watch, 60)
    assert code == 1, out  # it ended Stopped
    assert "node 0 | hello" in out and "node 0 | while watched" in out
    assert "Pending" in out and "Stopped" in out
