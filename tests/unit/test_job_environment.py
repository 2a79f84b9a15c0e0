"""What a job sees of its host: the environment allowlist and the spec's ``env`` (trainmaster.jobenv),
the job user's rules (executor_agent.jobuser) and the pre-exec that drops a job's privileges
(trainmaster.procs)."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from services.executor_agent.jobuser import identity_problem
from trainmaster.jobenv import SAFE_PATH, check_env, job_environment
from trainmaster.procs import JobIdentity, job_preexec

JOB = {"TM_JOB_ID": "j", "TM_JOB_NAME": "n", "TM_JOB_VERSION": "V001", "TM_ATTEMPT": "1"}


def fields(env: dict[str, str]) -> dict[str, str]:
    return {v.field: v.code for v in check_env(env)}


def test_plain_variables_pass() -> None:
    assert check_env({"OMP_NUM_THREADS": "4", "_x": "", "HF_HUB_OFFLINE": "1", "LANG": "de_DE.UTF-8"}) == []


@pytest.mark.parametrize("name", ["TM_NATS_URL", "TM_JOB_ID", "tm_nats_creds", "TM_"])
def test_trainmasters_own_names_are_refused(name: str) -> None:
    [violation] = check_env({name: "x"})
    assert violation.field == f"env.{name}" and violation.code == "invalid_env_variable"
    assert "TM_" in violation.message


@pytest.mark.parametrize("name", ["PATH", "HOME", "TMPDIR", "VIRTUAL_ENV", "RANK", "WORLD_SIZE", "MASTER_ADDR",
                                  "TF_CONFIG", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"])
def test_names_the_agent_sets_or_the_loader_reads_are_refused(name: str) -> None:
    [violation] = check_env({name: "x"})
    assert violation.field == f"env.{name}" and "cannot be given" in violation.message


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "", "Ä", "A=B"])
def test_names_must_be_shell_names(name: str) -> None:
    assert fields({name: "x"}) == {f"env.{name}": "invalid_env_variable"}


def test_values_are_bounded_and_counted() -> None:
    assert check_env({"BIG": "x" * 4096}) == []
    assert fields({"BIG": "x" * 4097, "NUL": "a\x00b"}) == {"env.BIG": "invalid_env_variable",
                                                            "env.NUL": "invalid_env_variable"}
    assert fields({"BIG": "é" * 2049}) == {"env.BIG": "invalid_env_variable"}  # bytes, not characters
    assert check_env({f"V{i}": "" for i in range(64)}) == []
    assert fields({f"V{i}": "" for i in range(65)}) == {"env": "too_many_env_variables"}


def test_the_job_environment_is_the_allowlist() -> None:
    env = job_environment(job=JOB, spec_env={"A": "1", "LC_ALL": "fr_FR.UTF-8", "TM_X": "y", "PATH": "/p"},
                          home="/r/home", tmpdir="/r/tmp", runtime_bin="/rt/bin", virtual_env="/rt")
    assert env == {"LANG": "C.UTF-8", "LC_ALL": "fr_FR.UTF-8", "PYTHONUNBUFFERED": "1", "A": "1",
                   "PATH": f"/rt/bin:{SAFE_PATH}", "HOME": "/r/home", "TMPDIR": "/r/tmp", "VIRTUAL_ENV": "/rt", **JOB}
    bare = job_environment(job=JOB, spec_env={}, home="/h", tmpdir="/t", runtime_bin=None, virtual_env=None)
    assert bare["PATH"] == SAFE_PATH and "VIRTUAL_ENV" not in bare


def test_root_never_runs_jobs() -> None:
    assert identity_problem("tm-job", 999) is None and identity_problem("tm-job", None) is None
    assert "never run as root" in (identity_problem("root", None) or "")
    assert "never run as root" in (identity_problem("toor", 0) or "")  # another name for uid 0
    assert "empty" in (identity_problem("", None) or "")


def test_the_job_preexec_sets_no_new_privs_and_the_umask() -> None:
    done = subprocess.run(["sh", "-c", "grep NoNewPrivs /proc/self/status; umask"], capture_output=True, text=True,
                          preexec_fn=job_preexec(None, 0o022), check=True)
    assert done.stdout.split() == ["NoNewPrivs:", "1", "0022"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can change its user")
def test_the_job_preexec_becomes_the_user_without_groups_and_keeps_the_earlier_steps(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    marker = tmp_path / "as-root"
    preexec = job_preexec(JobIdentity("nobody", nobody.pw_uid, nobody.pw_gid), 0o077,
                          as_root=[lambda: marker.write_text(str(os.geteuid()))])
    done = subprocess.run(["sh", "-c", "id -u; id -g; id -G; grep NoNewPrivs /proc/self/status; umask"],
                          capture_output=True, text=True, preexec_fn=preexec, check=True, cwd="/")
    assert done.stdout.split() == [str(nobody.pw_uid), str(nobody.pw_gid), str(nobody.pw_gid), "NoNewPrivs:", "1",
                                   "0077"]
    assert marker.read_text() == "0"  # the steps given first ran before the user changed
