"""What a job can and cannot do on its agent's host, tried by a real job run by a real agent (as
root, on a bus with authentication): it runs as its project's user, never root, with no_new_privs; its
environment is the allowlist plus its spec's ``env``, with nothing of the agent's settings; it
cannot read the agent's credentials, write into the agent's work folder outside its own folders,
or connect to the bus without credentials.  The validator's side (an ``env`` naming ``TM_*`` or a
loader variable is refused) is in tests/unit/test_job_environment.py; a custom image's command
(job user, no capabilities) in test_agent_containers.py."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from agent_harness import TOPO, assign, open_bus, script_job, start_agent
from support import SecuredNats

from services.executor_agent.jobuser import project_user_name
from trainmaster import bus

pytestmark = pytest.mark.integration

AGENT = "agent-iso"

# every attempt is reported, none is fatal: the test reads one line of facts
ATTEMPTS = """\
    import asyncio, json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    facts = {"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(), "env": dict(os.environ)}
    facts["no_new_privs"] = next(line.split()[1] for line in open("/proc/self/status")
                                 if line.startswith("NoNewPrivs:"))

    def attempt(what, action):
        try:
            action()
            facts[what] = "done"
        except OSError as exc:
            facts[what] = type(exc).__name__

    def write(path):
        with open(path, "w") as out:
            out.write("x")

    attempt("read_creds", lambda: open(args["creds"]).read())
    attempt("read_assignment", lambda: open(os.path.join(args["run_dir"], "assign.json")).read())
    attempt("list_runs", lambda: os.listdir(os.path.join(args["workdir"], "runs")))
    attempt("write_workdir", lambda: write(os.path.join(args["workdir"], "planted")))
    attempt("write_runs", lambda: write(os.path.join(args["workdir"], "runs", "planted")))
    attempt("write_runtimes", lambda: write(os.path.join(args["workdir"], "runtimes", "planted")))
    attempt("write_run_folder", lambda: write(os.path.join(args["run_dir"], "exit.json")))
    attempt("write_output", lambda: write(os.path.join(args["train_url"], "model.txt")))
    attempt("write_home", lambda: write(os.path.join(os.environ["HOME"], "cache.txt")))
    attempt("write_tmpdir", lambda: write(os.path.join(os.environ["TMPDIR"], "scratch.txt")))

    async def quiet(exc):
        pass

    async def anonymous():
        import nats
        try:
            nc = await nats.connect(args["nats"], connect_timeout=3, allow_reconnect=False,
                                    max_reconnect_attempts=0, error_cb=quiet)
        except Exception as exc:
            return f"refused: {exc}"
        await nc.close()
        return "connected"

    facts["nats"] = asyncio.run(anonymous())
    print("FACTS " + json.dumps(facts), flush=True)
"""


async def test_a_job_runs_unprivileged_with_an_allowlist_environment(secured_nats: SecuredNats,
                                                                     tmp_path: Path) -> None:
    service_creds = secured_nats.service_creds()
    nc = await bus.connect(secured_nats.settings(service_creds))
    try:
        await bus.provision(nc.jetstream(), TOPO)
    finally:
        await nc.close()
    agent_creds = secured_nats.agent_creds(AGENT)
    assert agent_creds.stat().st_mode & 0o777 == 0o600 and agent_creds.stat().st_uid == 0
    home = tmp_path / AGENT
    home.mkdir()
    agent = start_agent(secured_nats.url, home, name=AGENT, agent_id=AGENT,
                        env={"TM_NATS_CREDS": str(agent_creds), "TM_S3_SECRET_ACCESS_KEY": "s3cr3t-value"})
    workdir = home / "data" / "agents" / AGENT
    run_dir = workdir / "runs" / "job-iso" / "a1-n0"
    try:
        async with open_bus(secured_nats.url, agent, AGENT, creds=service_creds) as bus_:
            spec = script_job(tmp_path, ATTEMPTS, env={"MY_SETTING": "hello", "LANG": "C.UTF-8"},
                              parameters={"creds": str(agent_creds), "nats": secured_nats.url,
                                          "workdir": str(workdir), "run_dir": str(run_dir)})
            await bus_.send(assign("job-iso", spec))
            exited = await bus_.report("job-iso", "exited", timeout_s=60)
            assert exited.exit_code == 0, f"{exited.reason}\n{agent.output()}"
            lines = await bus_.log_lines("job-iso", until="FACTS ")
    finally:
        agent.terminate()
    facts = json.loads(next(m.data.decode() for m in lines if m.data.startswith(b"FACTS "))[6:])

    job_user = pwd.getpwnam(project_user_name("default"))  # the project of a job that names none
    assert (facts["uid"], facts["euid"]) == (job_user.pw_uid, job_user.pw_uid) != (0, 0)
    assert facts["groups"] in ([], [job_user.pw_gid])  # no supplementary group of the agent's
    assert facts["no_new_privs"] == "1"

    env: dict[str, str] = facts["env"]
    assert not {n for n in env if n.startswith("TM_")} - {"TM_JOB_ID", "TM_JOB_NAME", "TM_JOB_VERSION", "TM_ATTEMPT"}
    assert env["TM_JOB_ID"] == "job-iso" and env["TM_ATTEMPT"] == "1"
    assert env["MY_SETTING"] == "hello" and env["HOME"] == str(run_dir / "home")
    assert env["TMPDIR"] == str(run_dir / "tmp")
    nats_address = secured_nats.url.removeprefix("nats://")
    for name, value in env.items():
        assert nats_address not in value and str(agent_creds) not in value and "s3cr3t" not in value, name
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "VIRTUAL_ENV", "LANG", "LC_ALL", "PYTHONUNBUFFERED", "MY_SETTING",
                        "TM_JOB_ID", "TM_JOB_NAME", "TM_JOB_VERSION", "TM_ATTEMPT", "WORLD_SIZE", "RANK",
                        "NODE_RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TF_CONFIG",
                        # set by the interpreter itself at start (no locale coercion with LC_ALL set)
                        "LC_CTYPE"}, sorted(env)

    assert facts["read_creds"] == "PermissionError"
    assert facts["read_assignment"] == "PermissionError"
    assert facts["list_runs"] == "PermissionError"
    for where in ("write_workdir", "write_runs", "write_runtimes", "write_run_folder"):
        assert facts[where] == "PermissionError", where
    assert not (workdir / "planted").exists() and not (workdir / "runs" / "planted").exists()
    for where in ("write_output", "write_home", "write_tmpdir"):
        assert facts[where] == "done", where
    assert (tmp_path / "out" / "model.txt").read_text() == "x"  # its output was kept
    assert facts["nats"].startswith("refused") and "Authorization Violation" in facts["nats"], facts["nats"]


def test_the_agent_refuses_root_as_the_job_user(nats_server: str, tmp_path: Path) -> None:
    agent = start_agent(nats_server, tmp_path, env={"TM_AGENT_JOB_USER": "root"})
    try:
        agent.proc.wait(60)
    finally:
        agent.terminate()
    assert agent.proc.returncode != 0
    assert "jobs never run as root" in agent.output()
    assert os.geteuid() == 0  # the agent ran as root: the only case where it picks the job's user
