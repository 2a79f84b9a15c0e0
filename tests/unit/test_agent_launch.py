"""The agent's pure parts: launch plans (framework and custom image), the distributed environment,
podman's command line and configuration, runtime and cache keys, outcomes, log limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.executor_agent.launch import (
    HostFacts,
    Peer,
    Refused,
    distributed_env,
    node_log_limit,
    outcome,
    plan_launch,
)
from services.executor_agent.staging import cache_key, human_bytes
from trainmaster.containers import containers_conf, podman_run_argv
from trainmaster.messages import Algorithm, Assign, DataSource, JobRequest
from trainmaster.runtimes import RuntimeSpec, runtime_key

RUN = Path("/w/runs/job-1/a1-n0")
HOST = HostFacts(python="/w/runtimes/k/bin/python", virtual_env="/w/runtimes/k",
                 podman="/usr/bin/podman", cpus=2.0, memory_mb=4096, now=0.0)


def assign(spec: JobRequest, node: int = 0, node_count: int = 1) -> Assign:
    return Assign(job_id="job-1", attempt=1, node=node, node_count=node_count, spec=spec, name="n", version="V002")


def framework(**kw) -> JobRequest:
    fields = dict(name="n", data=[DataSource(path="/d/one")], output_path="/o",
                  algorithm=Algorithm(engine="pytorch", code_dir="/c", boot_file="train.py"), parameters={"lr": 0.1})
    return JobRequest(**{**fields, **kw})


def custom(**kw) -> JobRequest:
    fields = dict(name="n", data=[DataSource(path="/d/one")], output_path="s3://b/out", log_path="s3://b/logs",
                  algorithm=Algorithm(source="custom", image="localhost/tiny:1", command=["sh", "-c", "run"]))
    return JobRequest(**{**fields, **kw})


def test_a_job_sees_an_allowlist_and_nothing_of_the_agents_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"TM_NATS_CREDS": "/etc/tm/agent.creds", "TM_S3_SECRET_ACCESS_KEY": "s3cr3t",
                        "AWS_SECRET_ACCESS_KEY": "aws", "LD_PRELOAD": "/x.so"}.items():
        monkeypatch.setenv(name, value)
    spec = framework(env={"OMP_NUM_THREADS": "2", "LANG": "de_DE.UTF-8"})
    launch = plan_launch(assign(spec), RUN, HOST)
    assert launch.env == {
        "PATH": "/w/runtimes/k/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(RUN / "home"), "TMPDIR": str(RUN / "tmp"), "VIRTUAL_ENV": "/w/runtimes/k",
        "LANG": "de_DE.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2",
        "TM_JOB_ID": "job-1", "TM_JOB_NAME": "n", "TM_JOB_VERSION": "V002", "TM_ATTEMPT": "1"}
    assert launch.job_dirs == (RUN / "output", RUN / "home", RUN / "tmp")


def test_the_agent_drops_what_the_validator_would_have_refused() -> None:
    spec = framework(env={"TM_NATS_URL": "nats://x", "PATH": "/evil", "LD_PRELOAD": "/x.so", "RANK": "7", "OK": "1"})
    env = plan_launch(assign(spec), RUN, HostFacts(python="/usr/bin/python3")).env
    assert env["OK"] == "1" and "TM_NATS_URL" not in env and "LD_PRELOAD" not in env and "RANK" not in env
    assert env["PATH"] == "/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "VIRTUAL_ENV" not in env


def test_distributed_env_names_the_master_ranks_and_tf_config() -> None:
    peers = [Peer("10.0.0.1", 29500), Peer("10.0.0.2", 29501), Peer("10.0.0.3", 29502)]
    env = distributed_env(2, 3, peers)
    assert {k: env[k] for k in ("WORLD_SIZE", "RANK", "NODE_RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")} == {
        "WORLD_SIZE": "3", "RANK": "2", "NODE_RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500"}
    assert json.loads(env["TF_CONFIG"]) == {
        "cluster": {"worker": ["10.0.0.1:29500", "10.0.0.2:29501", "10.0.0.3:29502"]},
        "task": {"type": "worker", "index": 2}}
    with pytest.raises(ValueError):
        distributed_env(0, 3, peers[:2])


def test_a_framework_node_runs_its_boot_file_under_the_runtime() -> None:
    launch = plan_launch(assign(framework()), RUN, HOST)
    assert launch.argv == ["/w/runtimes/k/bin/python", "/c/train.py", "--data_url=/d/one",
                           f"--train_url={RUN / 'output'}", "--lr=0.1"]
    assert launch.cwd == Path("/c") and launch.container is None
    assert launch.env["TM_JOB_VERSION"] == "V002" and launch.env["HOME"] == str(RUN / "home")
    assert launch.log_file == RUN / "logs" / "n-V002-node0.log" and launch.log_url is None
    extra = {"RANK": "0"}
    assert launch.process_argv(extra) == launch.argv and launch.process_env({}, extra)["RANK"] == "0"


def test_sources_are_used_in_place_or_staged() -> None:
    one_s3 = plan_launch(assign(framework(data=[DataSource(path="s3://b/iris")])), RUN, HOST)
    assert one_s3.data_dir == RUN / "input" and one_s3.sources[0].staged
    mixed = plan_launch(assign(framework(data=[DataSource(path="/d/one"), DataSource(path="s3://b/x/")])), RUN, HOST)
    assert mixed.data_dir == RUN / "input"
    assert [(s.host_path, s.staged) for s in mixed.sources] == [(Path("/d/one"), False), (RUN / "input" / "1", True)]
    assert mixed.data_links == [(RUN / "input" / "0", Path("/d/one"))]
    copied = plan_launch(assign(framework()), RUN, HostFacts(python="p", stage_local="copy"))
    assert copied.sources[0].staged and copied.data_dir == RUN / "input"
    with pytest.raises(Refused, match="relative path"):
        plan_launch(assign(framework(data=[DataSource(path="data")])), RUN, HOST)
    with pytest.raises(Refused, match="dataset sources"):
        plan_launch(assign(framework(data=[DataSource(dataset="iris", version="1")])), RUN, HOST)


def test_a_custom_image_node_runs_under_podman_with_limits_mounts_and_no_network() -> None:
    launch = plan_launch(assign(custom(parameters={"epochs": 2})), RUN, HOST)
    assert launch.kind == "custom" and launch.argv == ["sh", "-c", "run", "--epochs=2"]
    assert launch.log_file == RUN / "logs" / "n-V002-node0.log" and launch.log_url == "s3://b/logs"
    argv = launch.process_argv({"RANK": "0"})
    assert argv[:4] == ["/usr/bin/podman", "run", "--rm", "--name"] and argv[4] == "tm-job-1-a1-n0"
    assert "--cap-drop=ALL" in argv and "--security-opt=no-new-privileges" in argv
    assert "--user" not in argv and "--read-only" not in argv
    assert argv[argv.index("--network") + 1] == "none"
    assert argv[argv.index("--cpus") + 1] == "2" and argv[argv.index("--memory") + 1] == "4096m"
    assert "/d/one:/data:ro" in argv and f"{RUN / 'output'}:/output:rw" in argv
    assert "TM_DATA_URL=/data" in argv and "TM_TRAIN_URL=/output" in argv and "RANK=0" in argv
    assert not any(a.startswith("HOME=") for a in argv), "the agent's environment stays out of the container"
    assert argv[-5:] == ["localhost/tiny:1", "sh", "-c", "run", "--epochs=2"]
    assert launch.process_env({"CONTAINERS_CONF": "/c.conf"}, {"RANK": "0"}) == {"CONTAINERS_CONF": "/c.conf"}
    several = plan_launch(assign(custom(data=[DataSource(path="/d/one"), DataSource(path="s3://b/x")]),
                                 node_count=2), RUN, HOST).process_argv({})
    assert "/d/one:/data/0:ro" in several and f"{RUN / 'input' / '1'}:/data/1:ro" in several
    assert several[several.index("--network") + 1] == "host"  # the nodes must reach each other
    with pytest.raises(Refused, match="need podman"):
        plan_launch(assign(custom()), RUN, HostFacts(python="p", podman=None))


def test_podman_argv_and_configuration() -> None:
    argv = podman_run_argv(podman="podman", name="x", image="img", command=["true"], mounts=[],
                           env={"B": "2", "A": "1"}, cpus=None, memory_mb=64, network="none", workdir="/w")
    assert argv == ["podman", "run", "--rm", "--name", "x", "--init", "--network", "none", "--pull", "never",
                    "--cap-drop=ALL", "--security-opt=no-new-privileges",
                    "--memory", "64m", "--memory-swap", "64m", "-e", "A=1", "-e", "B=2", "-w", "/w", "img", "true"]
    hardened = podman_run_argv(podman="podman", name="x", image="img", command=["true"], mounts=[], env={},
                               cpus=None, memory_mb=None, network="none", user="999:998", read_only=True)
    assert hardened[10:16] == ["--cap-drop=ALL", "--security-opt=no-new-privileges", "--user", "999:998",
                               "--read-only", "--read-only-tmpfs=true"]
    conf = containers_conf(nofile_hard=20000, nproc_hard=10**7, pid_max=32768)
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' in conf
    for line in ('runtime = "runc"', 'cgroup_manager = "cgroupfs"', 'events_logger = "file"', 'pull_policy = "never"'):
        assert line in conf


def test_runtime_and_cache_keys_change_with_what_they_depend_on() -> None:
    base = RuntimeSpec("pytorch", "2.13", ("torch==2.13.0",), "", "/venv/bin/python", "3.11.7")
    same = RuntimeSpec("pytorch", "2.13", ("torch==2.13.0",), "", "/venv/bin/python", "3.11.7")
    assert runtime_key(base) == runtime_key(same) and len(runtime_key(base)) == 20
    changed = [RuntimeSpec("pytorch", "2.14", ("torch==2.13.0",), "", "/venv/bin/python", "3.11.7"),
               RuntimeSpec("pytorch", "2.13", ("torch==2.12.0",), "", "/venv/bin/python", "3.11.7"),
               RuntimeSpec("pytorch", "2.13", ("torch==2.13.0",), "six\n", "/venv/bin/python", "3.11.7"),
               RuntimeSpec("pytorch", "2.13", ("torch==2.13.0",), "", "/other/python", "3.11.7"),
               RuntimeSpec("pytorch", "2.13", ("torch==2.13.0",), "", "/venv/bin/python", "3.12.1")]
    assert len({runtime_key(s) for s in [base, *changed]}) == 6
    assert runtime_key(RuntimeSpec("e", "1", (), "a\r\nb", "p", "v")) == runtime_key(RuntimeSpec("e", "1", (), "a\nb",
                                                                                                "p", "v"))
    s3 = cache_key("s3", "http://h", "s3://b/k/a.csv", "etag1", 10)
    assert s3 == cache_key("s3", "http://h", "s3://b/k/a.csv", "etag1", 10)
    assert s3 != cache_key("s3", "http://h", "s3://b/k/a.csv", "etag2", 10)
    assert cache_key("file", "/d/a", "10:1") != cache_key("file", "/d/a", "10:2")
    assert human_bytes(512) == "512 B" and human_bytes(3.5 * 1024**2) == "3.5 MiB"


def test_outcomes_of_containers_and_processes() -> None:
    assert outcome(0, None, None, None) == (0, None)
    assert outcome(-15, None, None, None) == (143, "the boot file was killed by signal SIGTERM")
    assert outcome(3, None, None, "boom", container=True) == (3, "the container exited with code 3: boom")
    assert outcome(137, None, None, None, container=True)[1].startswith("the container was killed (exit 137)")
    assert outcome(125, None, None, "Error: no such image", container=True) == (
        125, "podman could not run the container (is the image there?) (exit 125): Error: no such image")
    assert outcome(0, None, "uploading the log failed", None) == (1, "uploading the log failed")
    assert outcome(143, "stopped: user", None, None, container=True) == (143, "stopped: user")


def test_the_log_limit_is_shared_by_the_nodes() -> None:
    assert node_log_limit(100 * 1024**2, 1) == 100 * 1024**2
    assert node_log_limit(90_000, 3) == 30_000
    assert node_log_limit(100, 4) == 1024  # never less than a few lines


def test_a_container_gets_the_job_user_the_specs_env_and_the_job_variables() -> None:
    host = HostFacts(python="p", podman="podman", container_user="999:998", container_read_only=True)
    launch = plan_launch(assign(custom(env={"EPOCHS": "3", "TM_X": "no"})), RUN, host)
    argv = launch.process_argv({"RANK": "0"})
    assert argv[argv.index("--user") + 1] == "999:998" and "--read-only" in argv
    assert "EPOCHS=3" in argv and "TM_JOB_ID=job-1" in argv and "TM_ATTEMPT=1" in argv
    assert not any(a.startswith(("TM_X=", "PATH=", "HOME=")) for a in argv)
    assert launch.job_dirs == (RUN / "output",)
