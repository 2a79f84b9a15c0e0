"""A job's storage access: ``s3://`` storage roots (trainmaster.storage_roots, the validator's
``path_not_allowed``, the agent's check), the project's credentials file
(services/executor_agent/credentials.py), the ``AWS_*`` variables a node gets and the names a
job's ``env`` may not give."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.executor_agent import credentials
from services.executor_agent.destinations import check_inputs, resolve_roots
from services.executor_agent.launch import HostFacts, Refused, plan_launch
from services.validator.facts import resolve_roots as validator_roots
from services.validator.model import Facts
from services.validator.rules import check
from trainmaster.containers import podman_run_argv
from trainmaster.jobenv import check_env
from trainmaster.messages import Algorithm, Assign, DataSource, JobRequest
from trainmaster.settings import Settings
from trainmaster.storage_roots import not_allowed, root_of, s3_root, s3_root_of

ROOTS = ("/srv/team-a", "s3://ml/team-a", "s3://shared")
KEYS = {"access_key_id": "AKIATEAMA", "secret_access_key": "team-a-secret"}


# ------------------------------------------------------------------------- s3:// roots
@pytest.mark.parametrize(("url", "expected"), [
    ("s3://ml/team-a", "s3://ml/team-a"),
    ("s3://ml/team-a/", "s3://ml/team-a"),
    ("s3://ml/team-a/out/model", "s3://ml/team-a"),
    ("S3://ml/team-a/x", "s3://ml/team-a"),  # the scheme in any case
    ("s3://ml/team-a//x", "s3://ml/team-a"),
    ("s3://ml/team-a-evil", None),  # a prefix that only starts like the root
    ("s3://ml/team-a-evil/x", None),
    ("s3://ml/team", None),
    ("s3://ml", None),
    ("s3://ml/team-b/x", None),
    ("s3://ml-other/team-a", None),  # another bucket
    ("s3://ml//team-a", None),  # the key "/team-a" is not under "team-a"
    ("s3://ml/team-a/../team-b/x", None),  # folded, it leaves the root
    ("s3://ml/team-b/../team-a/x", None),  # as written (S3 keys are literal), it is outside
    ("s3://ml/team-a/./x", "s3://ml/team-a"),
    ("s3://shared/anything/at/all", "s3://shared"),  # a whole bucket
])
def test_an_s3_location_is_under_a_root_by_whole_segments(url, expected):
    assert s3_root_of(url, ROOTS) == expected


def test_local_and_s3_roots_never_mix():
    assert root_of("/srv/team-a/x", ROOTS) == "/srv/team-a"
    assert root_of("/s3:/ml/team-a", ROOTS) is None and s3_root_of("s3://ml/x", ["/srv"]) is None
    # an s3:// root is not a folder: resolving it must not turn it into one under the working folder
    assert resolve_roots(list(ROOTS)) == validator_roots(list(ROOTS)) == (os.path.realpath("/srv/team-a"),
                                                                         "s3://ml/team-a", "s3://shared")


def test_the_refusal_names_the_roots_of_the_same_kind():
    message = not_allowed("output location", "s3://ml/x", "s3://ml/x", "team-a", ROOTS)
    assert "s3://ml/team-a, s3://shared" in message and "/srv/team-a" not in message
    assert "s3://" not in not_allowed("output location", "/x", "/x", "team-a", ROOTS).split(": ", 1)[1]


@pytest.mark.parametrize("root", ["s3://", "s3:///x", "s3://b/a/../c", "s3://b/./c", "s3://b/a//c"])
def test_a_configured_s3_root_must_be_a_plain_prefix(root):
    with pytest.raises(ValueError):
        s3_root(root)
    with pytest.raises(ValidationError, match="storage_roots"):
        Settings(storage_roots={"team-a": [root]})


def test_settings_keep_s3_roots_in_their_compared_form():
    settings = Settings(storage_roots={"*": ["/srv/shared/"], "team-a": ["s3://ml/team-a/", "S3://Ml2"]})
    assert settings.storage_roots_for("team-a") == ("/srv/shared", "s3://ml/team-a", "s3://Ml2")
    assert s3_root_of("s3://Ml2/x", settings.storage_roots_for("team-a")) == "s3://Ml2"
    with pytest.raises(ValidationError, match="neither an absolute path nor s3://"):
        Settings(storage_roots={"team-a": ["relative/folder"]})


# ------------------------------------------------------------------------- the validator and the agent
def spec(**kw) -> JobRequest:
    fields = dict(name="iris", account="team-a", data=[DataSource(path="s3://ml/team-a/iris")],
                  output_path="s3://ml/team-a/out", log_path="s3://ml/team-a/logs",
                  algorithm=Algorithm(source="custom", image="localhost/tiny:1", command=["run"]))
    return JobRequest(**{**fields, **kw})


def not_allowed_fields(request: JobRequest, roots: tuple[str, ...]) -> list[str]:
    return sorted(v.field for v in check(request, Facts(roots=roots)) if v.code == "path_not_allowed")


def test_the_validator_holds_s3_locations_to_the_projects_s3_roots():
    assert not_allowed_fields(spec(), ROOTS) == []
    bad = spec(data=[DataSource(path="s3://ml/team-b/iris")], output_path="s3://ml/team-a-evil/out",
               log_path="s3://ml/team-a/../team-b/logs")
    assert not_allowed_fields(bad, ROOTS) == ["data[0].path", "log_path", "output_path"]
    [violation] = [v for v in check(spec(output_path="s3://ml/team-b/out"), Facts(roots=ROOTS))
                   if v.code == "path_not_allowed"]
    assert "output location s3://ml/team-b/out is outside the storage roots of project team-a" in violation.message


def test_without_an_s3_root_s3_locations_are_not_held_to_a_prefix():
    bad = spec(data=[DataSource(path="s3://ml/team-b/iris")], output_path="s3://anywhere/out")
    assert not_allowed_fields(bad, ("/srv/team-a",)) == []


def test_the_agent_checks_s3_locations_again():
    check_inputs(spec(), ROOTS)
    check_inputs(spec(output_path="s3://ml/team-b/out"), ("/srv/team-a",))  # no s3:// root: not held
    for bad in (spec(output_path="s3://ml/team-b/out"), spec(log_path="s3://ml/team-a-evil"),
                spec(data=[DataSource(path="s3://ml/team-b/iris")])):
        with pytest.raises(Refused, match="outside the storage roots of project team-a: s3://ml/team-a"):
            check_inputs(bad, ROOTS)


# ------------------------------------------------------------------------- the credentials file
def test_a_file_gives_the_aws_variables():
    found = credentials.parse(json.dumps({"s3": {**KEYS, "session_token": "tok", "endpoint_url": "http://s3:9000",
                                                  "region": "eu-west-1"}}).encode())
    assert found.environment() == {
        "AWS_ACCESS_KEY_ID": "AKIATEAMA", "AWS_SECRET_ACCESS_KEY": "team-a-secret", "AWS_SESSION_TOKEN": "tok",
        "AWS_ENDPOINT_URL": "http://s3:9000", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert credentials.parse(json.dumps({"s3": KEYS}).encode()).environment() == {
        "AWS_ACCESS_KEY_ID": "AKIATEAMA", "AWS_SECRET_ACCESS_KEY": "team-a-secret"}
    assert "team-a-secret" not in repr(found) and "AKIATEAMA" not in repr(found) and "tok" not in repr(found)


@pytest.mark.parametrize(("content", "why"), [
    (b"{", "not JSON"),
    (b"[]", "is not {"),
    (json.dumps({"s3": KEYS, "gcs": {}}).encode(), "is not {"),
    (json.dumps({"s3": {"access_key_id": "a"}}).encode(), "s3.secret_access_key missing"),
    (json.dumps({"s3": {**KEYS, "secret_key": "x"}}).encode(), "unknown field"),
    (json.dumps({"s3": {**KEYS, "region": 3}}).encode(), "s3.region is not a non-empty string"),
    (json.dumps({"s3": {**KEYS, "session_token": "a\nb"}}).encode(), "line break"),
])
def test_a_bad_file_says_what_is_wrong_and_never_a_value(content, why):
    with pytest.raises(ValueError, match=why) as raised:
        credentials.parse(content)
    assert "team-a-secret" not in str(raised.value)


def test_only_the_agents_private_files_and_folders_are_trusted():
    regular, folder = 0o100000, 0o040000
    assert credentials.file_problem(regular | 0o600, 0, 0, 100) is None
    assert credentials.file_problem(regular | 0o400, 0, 0, 100) is None
    assert "make it 0600" in credentials.file_problem(regular | 0o644, 0, 0, 100)
    assert "make it 0600" in credentials.file_problem(regular | 0o640, 0, 0, 100)
    assert "make it 0600" in credentials.file_problem(regular | 0o602, 0, 0, 100)
    assert "uid 1000" in credentials.file_problem(regular | 0o600, 1000, 0, 100)
    assert "plain file" in credentials.file_problem(folder | 0o600, 0, 0, 100)
    assert "larger" in credentials.file_problem(regular | 0o600, 0, 0, 10**6)
    assert credentials.folder_problem(folder | 0o700, 0, 0) is None
    assert credentials.folder_problem(folder | 0o755, 0, 0) is None  # names are no secret; files are
    assert "make it 0700" in credentials.folder_problem(folder | 0o777, 0, 0)
    assert "uid 1000" in credentials.folder_problem(folder | 0o700, 1000, 0)


def secrets_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "project-secrets"
    folder.mkdir(mode=0o700)
    for project, mode in (("team-a", 0o600), ("team-c", 0o644)):
        path = folder / f"{project}.json"
        path.write_text(json.dumps({"s3": {**KEYS, "access_key_id": f"AKIA{project}"}}))
        path.chmod(mode)
    return folder


def test_load_reads_a_projects_file_and_refuses_one_others_may_read(tmp_path):
    folder = secrets_dir(tmp_path)
    assert credentials.load(folder, "team-a").credentials.access_key_id == "AKIAteam-a"
    assert credentials.load(folder, "team-b") == credentials.Loaded()  # no file: nothing, silently
    assert credentials.load(None, "team-a") == credentials.Loaded()  # not configured
    refused = credentials.load(folder, "team-c")
    assert refused.credentials is None and "team-c.json is not used" in refused.problem
    assert "make it 0600" in refused.problem and "team-a-secret" not in refused.problem
    assert "not a project name" in credentials.load(folder, "../team-a").problem


def test_load_does_not_follow_links_nor_trust_an_open_folder(tmp_path):
    folder = secrets_dir(tmp_path)
    (folder / "team-d.json").symlink_to(folder / "team-a.json")
    assert "cannot be opened" in credentials.load(folder, "team-d").problem
    link = tmp_path / "link"
    link.symlink_to(folder)
    assert "symbolic link" in credentials.load(link, "team-a").problem
    assert "uid" in credentials.load(folder, "team-a", agent_uid=os.geteuid() + 1).problem
    folder.chmod(0o777)
    assert "make it 0700" in credentials.load(folder, "team-a").problem


# ------------------------------------------------------------------------- the node's environment
def test_the_spec_may_not_give_aws_names():
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "aws_access_key_id"):
        [violation] = check_env({name: "x"})
        assert violation.field == f"env.{name}" and violation.code == "invalid_env_variable"
        assert "set by the agent from the job's project" in violation.message


SECRETS = {"AWS_ACCESS_KEY_ID": "AKIATEAMA", "AWS_SECRET_ACCESS_KEY": "team-a-secret"}
RUN = Path("/w/runs/job-1/a1-n0")


def assign(request: JobRequest) -> Assign:
    return Assign(job_id="job-1", attempt=1, node=0, node_count=1, spec=request, name="n", version="V001")


def test_a_framework_node_gets_the_credentials_in_its_environment_only():
    request = spec(algorithm=Algorithm(engine="pytorch", code_dir="/c", boot_file="train.py"),
                   env={"AWS_SECRET_ACCESS_KEY": "from-the-spec"})
    launch = plan_launch(assign(request), RUN, HostFacts(python="/usr/bin/python3"))
    assert "AWS_SECRET_ACCESS_KEY" not in launch.env  # dropped: the agent checks the spec's env again
    env = launch.process_env({"TM_S3_SECRET_ACCESS_KEY": "agent"}, {"RANK": "0"}, SECRETS)
    assert env["AWS_SECRET_ACCESS_KEY"] == "team-a-secret" and env["RANK"] == "0"
    assert "TM_S3_SECRET_ACCESS_KEY" not in env
    assert "team-a-secret" not in " ".join(launch.process_argv({}, SECRETS)) + launch.header + repr(launch)


def test_a_container_gets_them_by_name_never_on_the_command_line():
    launch = plan_launch(assign(spec()), RUN, HostFacts(python="p", podman="/usr/bin/podman"))
    argv = launch.process_argv({"RANK": "0"}, SECRETS)
    assert "AKIATEAMA" not in " ".join(argv) and "team-a-secret" not in " ".join(argv)
    assert argv[argv.index("AWS_ACCESS_KEY_ID") - 1] == "-e" and argv[argv.index("AWS_SECRET_ACCESS_KEY") - 1] == "-e"
    env = launch.process_env({"CONTAINERS_CONF": "/c.conf", "AWS_SECRET_ACCESS_KEY": "the-agents"}, {}, SECRETS)
    assert env == {"CONTAINERS_CONF": "/c.conf", **SECRETS}
    assert not any(a.startswith("AWS_") for a in launch.process_argv({}, {}))  # none: none named
    plain = podman_run_argv(podman="p", name="n", image="i", command=["c"], mounts=[], env={}, cpus=None,
                            memory_mb=None, network="none", inherited=["B", "A"])
    assert plain[-6:] == ["-e", "B", "-e", "A", "i", "c"]
