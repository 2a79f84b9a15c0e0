"""Jobs of different projects on one agent cannot reach each other, tried with real jobs run at
the same time by a real agent (as root, ``TM_AGENT_JOB_USERS`` left to its default, per-project):
each project's jobs run as its own user; a job of team-b cannot read the environment of a running
job of team-a (``/proc/<pid>/environ``), list or read its output folder, or signal it, while a
second job of team-a, with the same user, can do all three (so the refusals are the users', not
the test's).  An account of a project user's name that trainmaster did not make is refused.  With
``TM_AGENT_JOB_USERS=shared`` every job runs as ``TM_AGENT_JOB_USER``."""

from __future__ import annotations

import json
import pwd
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from agent_harness import AgentProcess, Bus, open_bus, script_job, start_agent

from services.executor_agent.jobuser import project_user_comment, project_user_name
from trainmaster.messages import Assign, JobRequest
from trainmaster.natsd import NatsServer

pytestmark = pytest.mark.integration

# team-a's first job: says where it is, then stays alive until both others have looked
WATCHED = """\
    import json, os, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    out = args["train_url"]
    with open(os.path.join(out, "model.txt"), "w") as f:
        f.write("team-a's weights")
    facts = {"uid": os.getuid(), "pid": os.getpid(), "output": out,
             "output_mode": oct(os.stat(out).st_mode & 0o7777),
             "file_mode": oct(os.stat(os.path.join(out, "model.txt")).st_mode & 0o7777)}
    with open(os.path.join(args["meet"], "a.tmp"), "w") as f:
        json.dump(facts, f)
    os.rename(os.path.join(args["meet"], "a.tmp"), os.path.join(args["meet"], "a.json"))
    print("FACTS " + json.dumps(facts), flush=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not all(
            os.path.exists(os.path.join(args["meet"], who + ".done")) for who in ("other", "mate")):
        time.sleep(0.1)
"""

# a job that looks at team-a's running job
LOOKING = """\
    import json, os, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    where = os.path.join(args["meet"], "a.json")
    deadline = time.monotonic() + 90
    while not os.path.exists(where) and time.monotonic() < deadline:
        time.sleep(0.1)
    a = json.load(open(where))
    facts = {"uid": os.getuid()}

    def attempt(what, action):
        try:
            action()
            facts[what] = "done"
        except OSError as exc:
            facts[what] = type(exc).__name__

    attempt("read_environ", lambda: open(f"/proc/{a['pid']}/environ", "rb").read())
    attempt("list_output", lambda: os.listdir(a["output"]))
    attempt("read_output", lambda: open(os.path.join(a["output"], "model.txt")).read())
    attempt("signal", lambda: os.kill(a["pid"], 0))
    print("FACTS " + json.dumps(facts), flush=True)
    open(os.path.join(args["meet"], args["who"] + ".done"), "w").close()
"""


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    server = NatsServer(store_dir=tmp_path / "nats", port=-1)
    yield server.start()
    server.stop()


@pytest.fixture
def agent(nats_url: str, tmp_path: Path) -> Iterator[AgentProcess]:
    handle = start_agent(nats_url, tmp_path, env={"TM_STORAGE_ROOTS": json.dumps({"*": [str(tmp_path)]})})
    yield handle
    handle.terminate()


@pytest.fixture
async def bus(nats_url: str, agent: AgentProcess) -> AsyncIterator[Bus]:
    async with open_bus(nats_url, agent) as connected:
        yield connected


def assign(job_id: str, spec: JobRequest, project: str) -> Assign:
    spec = msgspec.structs.replace(spec, account=project)
    return Assign(job_id=job_id, attempt=1, node=0, node_count=1, spec=spec, name=job_id, version="V001")


def job(tmp_path: Path, name: str, body: str, meet: Path, **parameters: str) -> JobRequest:
    folder = tmp_path / name
    folder.mkdir()
    return script_job(folder, body, parameters={"meet": str(meet), **parameters},
                      env={"PROJECT_SECRET": f"{name}-secret-value"})


def facts_of(lines: list[str]) -> dict[str, object]:
    return json.loads(next(line for line in lines if line.startswith("FACTS "))[6:])


async def test_jobs_of_two_projects_cannot_reach_each_other(bus: Bus, agent: AgentProcess, tmp_path: Path) -> None:
    meet = tmp_path / "meet"  # where the jobs find each other: anyone may write, as /tmp
    meet.mkdir()
    meet.chmod(0o1777)
    await bus.send(assign("job-watched", job(tmp_path, "watched", WATCHED, meet), "team-a"))
    await bus.send(assign("job-other", job(tmp_path, "other", LOOKING, meet, who="other"), "team-b"))
    await bus.send(assign("job-mate", job(tmp_path, "mate", LOOKING, meet, who="mate"), "team-a"))
    facts = {}
    for job_id in ("job-watched", "job-other", "job-mate"):
        exited = await bus.report(job_id, "exited", timeout_s=120)
        assert (exited.exit_code, exited.reason) == (0, None), f"{job_id}: {exited.reason}\n{agent.output()[-3000:]}"
        facts[job_id] = facts_of([m.data.decode() for m in await bus.log_lines(job_id, until="FACTS ")])

    team_a, team_b = pwd.getpwnam(project_user_name("team-a")), pwd.getpwnam(project_user_name("team-b"))
    assert team_a.pw_gecos == project_user_comment("team-a") and team_b.pw_gecos == project_user_comment("team-b")
    assert team_a.pw_shell.endswith("nologin") and team_a.pw_gid != team_b.pw_gid
    assert facts["job-watched"]["uid"] == facts["job-mate"]["uid"] == team_a.pw_uid
    assert facts["job-other"]["uid"] == team_b.pw_uid != team_a.pw_uid
    assert 0 not in (team_a.pw_uid, team_b.pw_uid) and pwd.getpwnam("tm-job").pw_uid not in (team_a.pw_uid,
                                                                                              team_b.pw_uid)

    # the output folder is the job's alone; the files in it keep the usual modes (umask 022)
    assert (facts["job-watched"]["output_mode"], facts["job-watched"]["file_mode"]) == ("0o700", "0o644")
    other, mate = facts["job-other"], facts["job-mate"]
    for what in ("read_environ", "list_output", "read_output", "signal"):
        assert other[what] == "PermissionError", (what, other)
        assert mate[what] == "done", (what, mate)
    assert (tmp_path / "watched" / "out" / "model.txt").read_text() == "team-a's weights"


@pytest.fixture
def stranger() -> Iterator[str]:
    """A project whose user's name is taken by an account someone else made."""
    project = "team-stranger"
    name = project_user_name(project)
    subprocess.run(["userdel", name], capture_output=True)  # left by an interrupted session
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--comment",
                    "someone else's", name], check=True, capture_output=True)
    yield project
    subprocess.run(["userdel", name], check=True, capture_output=True)


async def test_an_account_of_a_project_users_name_that_is_not_ours_is_refused(bus: Bus, stranger: str,
                                                                             tmp_path: Path) -> None:
    meet = tmp_path / "meet"
    meet.mkdir()
    await bus.send(assign("job-stranger", job(tmp_path, "stranger", WATCHED, meet), stranger))
    exited = await bus.report("job-stranger", "exited", timeout_s=60)
    assert exited.exit_code == 1
    assert exited.reason and f"project {stranger}" in exited.reason and "not trainmaster's" in exited.reason
    assert not (meet / "a.json").exists()  # it never ran


IDENTITY = """\
    import os
    print(f"ids: {os.getuid()}:{os.getgid()}", flush=True)
"""


async def test_shared_runs_every_project_as_the_one_job_user(nats_url: str, tmp_path: Path) -> None:
    agent = start_agent(nats_url, tmp_path, name="shared", agent_id="agent-shared",
                        env={"TM_AGENT_JOB_USERS": "shared",
                             "TM_STORAGE_ROOTS": json.dumps({"*": [str(tmp_path)]})})
    try:
        async with open_bus(nats_url, agent, "agent-shared") as bus_:
            seen = set()
            for project in ("team-a", "team-b"):
                spec = job(tmp_path, project, IDENTITY, tmp_path)
                await bus_.send(assign(f"job-{project}", spec, project))
                exited = await bus_.report(f"job-{project}", "exited", timeout_s=60)
                assert exited.exit_code == 0, f"{exited.reason}\n{agent.output()[-3000:]}"
                lines = [m.data.decode() for m in await bus_.log_lines(f"job-{project}", until="ids: ")]
                seen |= {line for line in lines if line.startswith("ids: ")}
    finally:
        agent.terminate()
    job_user = pwd.getpwnam("tm-job")
    assert seen == {f"ids: {job_user.pw_uid}:{job_user.pw_gid}"}
