"""The validator's rules (services/validator/rules.py) over facts gathered from real files
(services/validator/facts.py) in a temporary directory."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.validator.facts import gather, inspect
from services.validator.rules import PathFact, check, is_within, local_paths, locate, warnings
from trainmaster.messages import Algorithm, DataSource, JobRequest, Resources, Subscription, Violation

CODE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


# ------------------------------------------------------------------------- the tree
@dataclass
class Tree:
    root: Path
    code: Path  # code/ with train.py, a sub-directory, and helpers
    boot: Path
    data: Path  # data/ with a csv
    data2: Path  # a second data directory
    out: Path  # empty output directory
    logs: Path
    outside: Path  # a script outside the code directory

    def spec(self, **changes) -> JobRequest:
        base = JobRequest(
            name="iris-sklearn",
            data=[DataSource(path=str(self.data))],
            algorithm=Algorithm(source="framework", engine="scikit-learn", engine_version="1.5",
                                code_dir=str(self.code), boot_file=str(self.boot)),
            parameters={"max_iter": 100, "learning_rate": 0.1, "verbose": True, "solver": "lbfgs"},
            output_path=str(self.out),
            log_path=str(self.logs),
        )
        return msgspec.structs.replace(base, **changes)

    def algo(self, **changes) -> Algorithm:
        return msgspec.structs.replace(self.spec().algorithm, **changes)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    boot = code / "train.py"
    boot.write_text("print('training')\n")
    (code / "pkg" / "model.py").write_text("")
    data = tmp_path / "data"
    data.mkdir()
    (data / "iris.csv").write_text("a,b\n1,2\n")
    data2 = tmp_path / "more-data"
    data2.mkdir()
    (data2 / "extra.csv").write_text("a,b\n")
    out = tmp_path / "out"
    out.mkdir()
    logs = tmp_path / "logs"
    outside = tmp_path / "elsewhere" / "evil.py"
    outside.parent.mkdir()
    outside.write_text("print('outside')\n")
    return Tree(tmp_path, code, boot, data, data2, out, logs, outside)


def run(spec: JobRequest) -> list[Violation]:
    return check(spec, gather(spec))


def pairs(violations: list[Violation]) -> set[tuple[str, str]]:
    return {(v.field, v.code) for v in violations}


# ------------------------------------------------------------------------- valid requests
def test_a_good_request_has_no_violations_and_no_warnings(tree):
    spec = tree.spec()
    facts = gather(spec)
    assert check(spec, facts) == []
    assert warnings(spec, facts) == []


VALID: list[tuple[str, Callable[[Tree], JobRequest]]] = [
    ("file-urls", lambda t: t.spec(
        data=[DataSource(path=f"file://{t.data}")],
        algorithm=t.algo(code_dir=f"file://{t.code}", boot_file=f"file://{t.boot}"),
        output_path=f"file://{t.out}", log_path=f"file://localhost{t.logs}")),
    ("several-data-paths", lambda t: t.spec(data=[DataSource(path=str(t.data)), DataSource(path=str(t.data2))])),
    ("data-is-one-file", lambda t: t.spec(data=[DataSource(path=str(t.data / "iris.csv"))])),
    ("boot-in-sub-directory", lambda t: t.spec(algorithm=t.algo(boot_file=str(t.code / "pkg" / "model.py")))),
    ("boot-with-harmless-dotdot", lambda t: t.spec(algorithm=t.algo(boot_file=f"{t.code}/pkg/../train.py"))),
    ("code-dir-with-trailing-slash", lambda t: t.spec(algorithm=t.algo(code_dir=f"{t.code}/"))),
    ("output-does-not-exist-yet", lambda t: t.spec(output_path=str(t.root / "new" / "out"))),
    ("output-beside-data-with-common-prefix", lambda t: t.spec(output_path=str(t.root / "data-out"))),
    ("no-parameters", lambda t: t.spec(parameters={})),
    ("parameter-name-shapes", lambda t: t.spec(parameters={"_x": 1, "a.b-c": "v", "A1": 2.5, "flag": False})),
    ("node-count-4", lambda t: t.spec(resources=Resources(pool="cpu", node_count=4))),
    ("with-subscription", lambda t: t.spec(subscription=Subscription(topic="t", events=["OnJobFailed"]))),
]


@pytest.mark.parametrize("make", [m for _, m in VALID], ids=[i for i, _ in VALID])
def test_valid_variants(tree, make):
    assert run(make(tree)) == []


def test_symlinks_that_stay_inside_are_fine(tree):
    link = tree.code / "run.py"
    link.symlink_to(tree.boot)
    code_link = tree.root / "code-link"
    code_link.symlink_to(tree.code, target_is_directory=True)
    assert run(tree.spec(algorithm=tree.algo(boot_file=str(link)))) == []
    # code directory given through a symbolic link, boot file through the same link
    assert run(tree.spec(algorithm=tree.algo(code_dir=str(code_link), boot_file=f"{code_link}/train.py"))) == []
    # ... or through the real path: both resolve to the same place
    assert run(tree.spec(algorithm=tree.algo(code_dir=str(code_link), boot_file=str(tree.boot)))) == []


# ------------------------------------------------------------------------- one rule at a time
def _escape_link(t: Tree) -> str:
    link = t.code / "escape.py"
    link.symlink_to(t.outside)
    return str(link)


def _escape_dir_link(t: Tree) -> str:
    link = t.code / "lib"
    link.symlink_to(t.outside.parent, target_is_directory=True)
    return str(link / "evil.py")


def _output_link_to_data(t: Tree) -> str:
    link = t.root / "out-link"
    link.symlink_to(t.data, target_is_directory=True)
    return str(link)


def _a_file(t: Tree) -> str:
    f = t.root / "a-file.txt"
    f.write_text("x")
    return str(f)


CASES: list[tuple[str, Callable[[Tree], JobRequest], str, str]] = [
    # -- required fields
    ("name-missing", lambda t: t.spec(name=None), "name", "required"),
    ("name-empty", lambda t: t.spec(name=""), "name", "required"),
    ("data-missing", lambda t: t.spec(data=[]), "data", "required"),
    ("data-source-empty", lambda t: t.spec(data=[DataSource(path=str(t.data)), DataSource()]), "data[1]", "required"),
    ("engine-missing", lambda t: t.spec(algorithm=t.algo(engine=None)), "algorithm.engine", "required"),
    ("code-dir-missing", lambda t: t.spec(algorithm=t.algo(code_dir=None)), "algorithm.code_dir", "required"),
    ("boot-file-missing", lambda t: t.spec(algorithm=t.algo(boot_file="")), "algorithm.boot_file", "required"),
    ("output-missing", lambda t: t.spec(output_path=None), "output_path", "required"),
    ("log-missing", lambda t: t.spec(log_path=None), "log_path", "required"),
    # -- name, billing
    ("name-with-space", lambda t: t.spec(name="my job"), "name", "invalid_name"),
    ("name-with-dot", lambda t: t.spec(name="job.v1"), "name", "invalid_name"),
    ("name-non-ascii", lambda t: t.spec(name="训练"), "name", "invalid_name"),
    ("name-too-long", lambda t: t.spec(name="a" * 65), "name", "invalid_name"),
    ("billing-yearly", lambda t: t.spec(billing_mode="yearly"), "billing_mode", "unsupported_billing_mode"),
    # -- sources for a later release
    ("dataset-without-version", lambda t: t.spec(data=[DataSource(dataset="mnist")]), "data[0].version", "required"),
    ("version-without-dataset", lambda t: t.spec(data=[DataSource(path=str(t.data), version="V001")]),
     "data[0].version", "version_without_dataset"),
    ("path-and-dataset", lambda t: t.spec(data=[DataSource(path=str(t.data), dataset="mnist")]),
     "data[0]", "ambiguous_source"),
    ("preset-unknown", lambda t: t.spec(algorithm=Algorithm(source="preset", preset="resnet50")),
     "algorithm.preset", "unknown_preset"),
    ("custom-without-image", lambda t: t.spec(algorithm=Algorithm(source="custom")), "algorithm.image", "required"),
    ("unknown-source", lambda t: t.spec(algorithm=t.algo(source="magic")), "algorithm.source", "unsupported_source"),
    # -- location forms
    ("data-s3-unlisted", lambda t: t.spec(data=[DataSource(path=str(t.data)), DataSource(path="s3://bucket/iris/")]),
     "data[1].path", "data_path_not_found"),
    ("data-obs", lambda t: t.spec(data=[DataSource(path="obs://bucket/iris")]), "data[0].path", "unsupported_storage"),
    ("data-relative", lambda t: t.spec(data=[DataSource(path="data/iris")]), "data[0].path", "relative_path"),
    ("data-dot-relative", lambda t: t.spec(data=[DataSource(path="./data")]), "data[0].path", "relative_path"),
    ("data-home-tilde", lambda t: t.spec(data=[DataSource(path="~/data")]), "data[0].path", "relative_path"),
    ("data-file-url-with-host", lambda t: t.spec(data=[DataSource(path=f"file://server{t.data}")]),
     "data[0].path", "invalid_path"),
    ("data-file-url-relative", lambda t: t.spec(data=[DataSource(path="file:data")]), "data[0].path", "invalid_path"),
    ("data-nul", lambda t: t.spec(data=[DataSource(path=f"{t.data}\x00x")]), "data[0].path", "invalid_path"),
    ("code-dir-relative", lambda t: t.spec(algorithm=t.algo(code_dir="code")), "algorithm.code_dir", "relative_path"),
    ("boot-relative", lambda t: t.spec(algorithm=t.algo(boot_file="train.py")), "algorithm.boot_file",
     "relative_path"),
    ("code-dir-s3-unlisted", lambda t: t.spec(algorithm=t.algo(code_dir="s3://b/code",
                                                                boot_file="s3://b/code/train.py")),
     "algorithm.code_dir", "code_dir_not_found"),
    ("output-obs", lambda t: t.spec(output_path="obs://bucket/out"), "output_path", "unsupported_storage"),
    ("output-s3-no-bucket", lambda t: t.spec(output_path="s3:///out"), "output_path", "invalid_path"),
    ("output-relative", lambda t: t.spec(output_path="out"), "output_path", "relative_path"),
    ("log-https", lambda t: t.spec(log_path="https://logs.example.com/x"), "log_path", "unsupported_storage"),
    ("log-relative", lambda t: t.spec(log_path="../logs"), "log_path", "relative_path"),
    # -- data paths
    ("data-not-found", lambda t: t.spec(data=[DataSource(path=str(t.root / "nope"))]),
     "data[0].path", "data_path_not_found"),
    ("second-data-not-found", lambda t: t.spec(
        data=[DataSource(path=str(t.data)), DataSource(path=str(t.data / "missing.csv"))]),
     "data[1].path", "data_path_not_found"),
    # -- code directory and boot file
    ("code-dir-not-found", lambda t: t.spec(algorithm=t.algo(code_dir=str(t.root / "nocode"))),
     "algorithm.code_dir", "code_dir_not_found"),
    ("code-dir-is-a-file", lambda t: t.spec(algorithm=t.algo(code_dir=str(t.boot))),
     "algorithm.code_dir", "code_dir_not_directory"),
    ("boot-not-found", lambda t: t.spec(algorithm=t.algo(boot_file=str(t.code / "nope.py"))),
     "algorithm.boot_file", "boot_file_not_found"),
    ("boot-is-a-directory", lambda t: t.spec(algorithm=t.algo(boot_file=str(t.code / "pkg"))),
     "algorithm.boot_file", "boot_file_not_file"),
    ("boot-is-the-code-dir", lambda t: t.spec(algorithm=t.algo(boot_file=str(t.code))),
     "algorithm.boot_file", "boot_file_not_file"),
    ("boot-dotdot-escape", lambda t: t.spec(algorithm=t.algo(boot_file=f"{t.code}/../elsewhere/evil.py")),
     "algorithm.boot_file", "boot_file_outside_code_dir"),
    ("boot-elsewhere", lambda t: t.spec(algorithm=t.algo(boot_file=str(t.outside))),
     "algorithm.boot_file", "boot_file_outside_code_dir"),
    ("boot-symlink-escape", lambda t: t.spec(algorithm=t.algo(boot_file=_escape_link(t))),
     "algorithm.boot_file", "boot_file_outside_code_dir"),
    ("boot-through-dir-symlink-escape", lambda t: t.spec(algorithm=t.algo(boot_file=_escape_dir_link(t))),
     "algorithm.boot_file", "boot_file_outside_code_dir"),
    ("boot-in-sibling-with-common-prefix", lambda t: t.spec(algorithm=t.algo(code_dir=str(t.code / "pkg"))),
     "algorithm.boot_file", "boot_file_outside_code_dir"),
    # -- output and log locations
    ("output-is-data", lambda t: t.spec(output_path=str(t.data)), "output_path", "output_overlaps_data"),
    ("output-is-data-trailing-slash", lambda t: t.spec(output_path=f"{t.data}/"), "output_path",
     "output_overlaps_data"),
    ("output-inside-data", lambda t: t.spec(output_path=str(t.data / "model")), "output_path",
     "output_overlaps_data"),
    ("output-contains-data", lambda t: t.spec(output_path=str(t.root)), "output_path", "output_overlaps_data"),
    ("output-dotdot-into-data", lambda t: t.spec(output_path=f"{t.out}/../data/m"), "output_path",
     "output_overlaps_data"),
    ("output-symlink-to-data", lambda t: t.spec(output_path=_output_link_to_data(t)), "output_path",
     "output_overlaps_data"),
    ("output-is-second-data", lambda t: t.spec(
        data=[DataSource(path=str(t.data)), DataSource(path=str(t.data2))], output_path=str(t.data2)),
     "output_path", "output_overlaps_data"),
    ("output-is-a-file", lambda t: t.spec(output_path=_a_file(t)), "output_path", "output_not_directory"),
    ("log-is-a-file", lambda t: t.spec(log_path=_a_file(t)), "log_path", "log_path_not_directory"),
    ("log-inside-data", lambda t: t.spec(log_path=str(t.data / "logs")), "log_path", "log_path_in_data"),
    # -- run parameters
    ("param-starts-with-digit", lambda t: t.spec(parameters={"1st": 1}), 'parameters["1st"]',
     "invalid_parameter_name"),
    ("param-with-space", lambda t: t.spec(parameters={"train steps": 1}), 'parameters["train steps"]',
     "invalid_parameter_name"),
    ("param-with-equals", lambda t: t.spec(parameters={"a=b": 1}), 'parameters["a=b"]', "invalid_parameter_name"),
    ("param-dashes", lambda t: t.spec(parameters={"--lr": 1}), 'parameters["--lr"]', "invalid_parameter_name"),
    ("param-empty-name", lambda t: t.spec(parameters={"": 1}), 'parameters[""]', "invalid_parameter_name"),
    ("param-value-newline", lambda t: t.spec(parameters={"solver": "a\nb"}), "parameters.solver",
     "invalid_parameter_value"),
    ("param-value-cr", lambda t: t.spec(parameters={"solver": "a\rb"}), "parameters.solver",
     "invalid_parameter_value"),
    ("param-value-nul", lambda t: t.spec(parameters={"max_iter": "1\x00"}), "parameters.max_iter",
     "invalid_parameter_value"),
    # -- resources
    ("node-count-zero", lambda t: t.spec(resources=Resources(node_count=0)), "resources.node_count",
     "invalid_node_count"),
    ("node-count-negative", lambda t: t.spec(resources=Resources(node_count=-3)), "resources.node_count",
     "invalid_node_count"),
]


@pytest.mark.parametrize(("make", "field", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule(tree, make, field, code):
    violations = run(make(tree))
    assert (field, code) in pairs(violations), violations
    for v in violations:
        assert CODE_RE.match(v.code)
        assert len(v.message) > 20 and v.field


def test_every_code_is_documented_in_the_readme(tree):
    readme = (Path(__file__).parents[2] / "services" / "validator" / "README.md").read_text()
    for _, _, _, code in CASES:
        assert f"`{code}`" in readme, code
    assert "`output_not_empty`" in readme


def test_an_unreadable_data_path(tree):
    spec = tree.spec()
    facts = gather(spec)
    facts[str(tree.data)] = PathFact(exists=True, is_dir=True, readable=False, real=str(tree.data))
    assert pairs(check(spec, facts)) == {("data[0].path", "data_path_not_readable")}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_an_unreadable_data_path_on_disk(tree):
    tree.data.chmod(0o300)
    try:
        assert ("data[0].path", "data_path_not_readable") in pairs(run(tree.spec()))
    finally:
        tree.data.chmod(0o755)


def test_a_data_path_that_cannot_be_inspected_says_why():
    spec = JobRequest(data=[DataSource(path="/x/data")])
    facts = {"/x/data": PathFact(real="/x/data", error="permission denied")}
    found = [v for v in check(spec, facts) if v.field == "data[0].path"]
    assert [v.code for v in found] == ["data_path_not_found"]
    assert "permission denied" in found[0].message


def test_a_dataset_source_needs_no_local_facts(tree):
    # whether the dataset and version exist is the registry's fact (see test_catalog_rules)
    assert run(tree.spec(data=[DataSource(dataset="mnist", version="V002")])) == []


def test_other_storage_schemes_point_to_s3(tree):
    (v,) = run(tree.spec(output_path="obs://bucket/out"))
    assert (v.field, v.code) == ("output_path", "unsupported_storage")
    assert "s3://" in v.message


def test_relative_path_message_says_to_give_an_absolute_path(tree):
    (v,) = run(tree.spec(log_path="logs"))
    assert v.code == "relative_path" and "absolute path" in v.message


def test_the_boot_escape_message_shows_where_it_leads(tree):
    link = _escape_link(tree)
    (v,) = run(tree.spec(algorithm=tree.algo(boot_file=link)))
    assert v.code == "boot_file_outside_code_dir"
    assert os.path.realpath(tree.outside) in v.message


# ------------------------------------------------------------------------- all at once
def test_every_violation_comes_back_at_once(tree):
    spec = JobRequest(
        name="bad name",
        billing_mode="monthly",
        data=[DataSource(path="relative/data"), DataSource(dataset="mnist"), DataSource(),
              DataSource(path=str(tree.root / "missing"))],
        algorithm=Algorithm(source="framework", engine=None, code_dir=str(tree.code),
                            boot_file=f"{tree.code}/../elsewhere/evil.py"),
        parameters={"ok": 1, "9lives": 2, "msg": "two\nlines"},
        output_path=None,
        log_path="obs://bucket/logs",
        resources=Resources(node_count=0),
    )
    assert pairs(run(spec)) == {
        ("name", "invalid_name"),
        ("billing_mode", "unsupported_billing_mode"),
        ("data[0].path", "relative_path"),
        ("data[1].version", "required"),
        ("data[2]", "required"),
        ("data[3].path", "data_path_not_found"),
        ("algorithm.engine", "required"),
        ("algorithm.boot_file", "boot_file_outside_code_dir"),
        ('parameters["9lives"]', "invalid_parameter_name"),
        ("parameters.msg", "invalid_parameter_value"),
        ("output_path", "required"),
        ("log_path", "unsupported_storage"),
        ("resources.node_count", "invalid_node_count"),
    }


def test_an_empty_request_reports_every_missing_field():
    assert pairs(run(JobRequest())) == {
        ("name", "required"), ("data", "required"), ("algorithm.engine", "required"),
        ("algorithm.code_dir", "required"), ("algorithm.boot_file", "required"),
        ("output_path", "required"), ("log_path", "required"),
    }


def test_check_is_deterministic(tree):
    spec = tree.spec(name="x y", data=[DataSource(path="a"), DataSource(path="s3://b")], output_path="o")
    facts = gather(spec)
    assert check(spec, facts) == check(spec, facts)


# ------------------------------------------------------------------------- warnings
def test_non_empty_output_directory_is_a_warning_not_a_violation(tree):
    (tree.out / "old-model.pkl").write_bytes(b"x")
    spec = tree.spec()
    facts = gather(spec)
    assert check(spec, facts) == []
    (w,) = warnings(spec, facts)
    assert (w.field, w.code) == ("output_path", "output_not_empty")
    assert str(tree.out) in w.message


@pytest.mark.parametrize("where", ["empty", "missing", "remote"])
def test_no_warning_for_empty_missing_or_remote_output(tree, where):
    output = {"empty": str(tree.out), "missing": str(tree.root / "new"), "remote": "s3://b/out"}[where]
    spec = tree.spec(output_path=output)
    assert warnings(spec, gather(spec)) == []


# ------------------------------------------------------------------------- the pieces
@pytest.mark.parametrize(("raw", "kind", "path"), [
    ("/data", "local", "/data"),
    ("file:///data/x", "local", "/data/x"),
    ("file://localhost/data", "local", "/data"),
    ("file:/data", "local", "/data"),
    ("FILE:///data", "local", "/data"),
    ("file://host/data", "invalid", ""),
    ("file://", "invalid", ""),
    ("file:data", "invalid", ""),
    ("/a\x00b", "invalid", ""),
    ("s3://bucket/key", "remote", "s3"),
    ("S3://bucket/key", "remote", "s3"),
    ("obs://bucket", "remote", "obs"),
    ("data", "relative", ""),
    ("./data", "relative", ""),
    ("../data", "relative", ""),
    ("~/data", "relative", ""),
    ("c:data", "relative", ""),
])
def test_locate(raw, kind, path):
    loc = locate(raw)
    assert (loc.kind, loc.path) == (kind, path)


@pytest.mark.parametrize(("child", "parent", "inside"), [
    ("/a/b", "/a", True), ("/a", "/a", True), ("/ab", "/a", False), ("/a", "/a/b", False),
    ("/x", "/", True), ("/", "/", True),
])
def test_is_within(child, parent, inside):
    assert is_within(child, parent) is inside


def test_local_paths_lists_each_local_path_once(tree):
    spec = tree.spec(data=[DataSource(path=str(tree.data)), DataSource(path=str(tree.data)),
                           DataSource(path="s3://b/x"), DataSource(path="rel")],
                     log_path=f"file://{tree.logs}")
    raws = [raw for raw, _ in local_paths(spec)]
    assert raws == [str(tree.data), str(tree.code), str(tree.boot), str(tree.out), f"file://{tree.logs}"]
    assert set(gather(spec)) == set(raws)


def test_facts_on_real_files(tree):
    d = inspect(str(tree.data))
    assert (d.exists, d.is_dir, d.is_file, d.readable, d.has_entries) == (True, True, False, True, True)
    assert d.real == os.path.realpath(tree.data)
    f = inspect(str(tree.boot))
    assert (f.exists, f.is_dir, f.is_file, f.readable) == (True, False, True, True)
    empty = inspect(str(tree.out))
    assert (empty.exists, empty.is_dir, empty.has_entries) == (True, True, False)
    missing = inspect(str(tree.root / "nope" / "x"))
    assert not missing.exists and missing.real == os.path.realpath(tree.root / "nope" / "x")
    link = tree.code / "escape.py"
    link.symlink_to(tree.outside)
    assert inspect(str(link)).real == os.path.realpath(tree.outside)
    dangling = tree.code / "dangling.py"
    dangling.symlink_to(tree.root / "gone.py")
    assert not inspect(str(dangling)).exists
    assert not inspect("/" + "x" * 5000).exists  # name too long: an error, not an exception


# ------------------------------------------------------------------------- property
_prefixes = st.sampled_from(["", "/", "file://", "file:///", "s3://", "./", "../", "/tmp/", "file://host/", "~/"])
_paths = st.one_of(st.none(), st.builds(lambda p, s: p + s, _prefixes, st.text(max_size=30)))
_texts = st.text(max_size=40)
_param_values = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=True), st.booleans())

job_requests = st.builds(
    JobRequest,
    name=st.none() | _texts,
    description=_texts,
    data=st.lists(st.builds(DataSource, path=_paths, dataset=st.none() | _texts, version=st.none() | _texts),
                  max_size=4),
    algorithm=st.builds(
        Algorithm,
        source=st.sampled_from(["framework", "framework", "preset", "custom"]) | _texts,
        engine=st.none() | _texts,
        engine_version=st.none() | _texts,
        code_dir=_paths,
        boot_file=_paths,
        preset=st.none() | _texts,
        image=st.none() | _texts,
        command=st.none() | st.lists(_texts, max_size=3),
    ),
    parameters=st.dictionaries(_texts, _param_values, max_size=5),
    output_path=_paths,
    log_path=_paths,
    resources=st.builds(Resources, pool=_texts, flavor=st.none() | _texts, node_count=st.integers()),
    subscription=st.none() | st.builds(Subscription, topic=_texts, events=st.lists(_texts, max_size=3)),
    billing_mode=st.sampled_from(["on-demand", "on-demand"]) | _texts,
)

path_facts = st.builds(PathFact, exists=st.booleans(), is_dir=st.booleans(), is_file=st.booleans(),
                       readable=st.booleans(), real=st.sampled_from(["", "/", "/tmp", "/tmp/x", "/a/b"]) | _texts,
                       has_entries=st.booleans(), error=st.none() | _texts)


def _assert_violations(found: object) -> None:
    assert isinstance(found, list)
    for v in found:
        assert isinstance(v, Violation)
        assert isinstance(v.field, str) and v.field
        assert isinstance(v.code, str) and CODE_RE.match(v.code)
        assert isinstance(v.message, str) and v.message


@settings(max_examples=300, deadline=None)
@given(spec=job_requests)
def test_check_never_raises_on_gathered_facts(spec):
    facts = gather(spec)
    _assert_violations(check(spec, facts))
    _assert_violations(warnings(spec, facts))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=job_requests, data=st.data())
def test_check_never_raises_on_arbitrary_facts(spec, data):
    raws = [raw for raw, _ in local_paths(spec)]
    chosen = data.draw(st.lists(st.sampled_from(raws), unique=True) if raws else st.just([]))
    facts = {raw: data.draw(path_facts) for raw in chosen}
    _assert_violations(check(spec, facts))
    _assert_violations(warnings(spec, facts))


@settings(max_examples=100, deadline=None)
@given(spec=job_requests)
def test_a_request_without_a_name_or_data_is_never_accepted(spec):
    if not spec.name or not spec.data:
        assert run(spec) != []


def test_the_jobs_env_is_checked_name_by_name(tree: Tree) -> None:
    spec = tree.spec(env={"OMP_NUM_THREADS": "4", "TM_NATS_URL": "nats://x", "LD_PRELOAD": "/x.so"})
    assert pairs(run(spec)) == {("env.TM_NATS_URL", "invalid_env_variable"), ("env.LD_PRELOAD", "invalid_env_variable")}
    assert run(tree.spec(env={"OMP_NUM_THREADS": "4", "LANG": "C.UTF-8"})) == []
