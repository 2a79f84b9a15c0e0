"""The validator's catalog and registry rules (services/validator/catalog_rules.py), table-driven:
engines, presets and their hyperparameters, custom images, pools/flavors/node counts, accounts,
datasets, regions, long file names (R7), and the code scan's warnings over real files."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from services.validator import codescan
from services.validator.model import AccountFact, CodeFinding, CodeScan, DatasetFact, Facts, PathFact, VersionFact
from services.validator.rules import check, warnings
from trainmaster.catalog import CatalogError, parse_resources
from trainmaster.messages import Algorithm, DataSource, JobRequest, Resources, Subscription

CODE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
S3_DATA = "s3://data-bucket/iris"
S3_OUT = "s3://data-bucket/out"


def s3(files: int = 3, long_names: int = 0, region: str = "us-east-1", has_entries: bool = True) -> PathFact:
    return PathFact(exists=True, is_dir=True, readable=True, has_entries=has_entries, remote=True, real="",
                    region=region, files=files, long_names=long_names)


def base(**changes) -> JobRequest:
    """A valid preset job on s3 data (no local paths: the facts below are all it needs)."""
    spec = JobRequest(
        name="iris", data=[DataSource(path=S3_DATA)],
        algorithm=Algorithm(source="preset", preset="sklearn-classifier"),
        parameters={"label_column": "species", "n_estimators": "50"},
        output_path=S3_OUT, log_path="s3://data-bucket/logs",
    )
    return msgspec.structs.replace(spec, **changes)


def facts(**changes) -> Facts:
    paths = {S3_DATA: s3(), S3_OUT: PathFact(remote=True, region="us-east-1"),
             "s3://data-bucket/logs": PathFact(remote=True, region="us-east-1")}
    defaults = dict(paths=paths, datasets={"mnist": DatasetFact("s3://data-bucket/mnist",
                                                                  {"V001": VersionFact(10, 0)})},
                    account=AccountFact("default", True, 10.0, "USD"), topic_exists=True, region="us-east-1",
                    code=None)
    defaults.update(changes)
    return Facts(**defaults)


def framework(engine: str = "scikit-learn", version: str | None = "1.5") -> Algorithm:
    return Algorithm(source="framework", engine=engine, engine_version=version, code_dir="s3://data-bucket/code",
                     boot_file="s3://data-bucket/code/train.py")


def framework_facts(**changes) -> Facts:
    """``facts`` plus an s3 code directory holding the boot file."""
    f = facts(**changes)
    code = "s3://data-bucket/code"
    paths = {**f.paths,
             code: PathFact(exists=True, is_dir=True, readable=True, has_entries=True, remote=True, real=code,
                            region="us-east-1", files=1),
             f"{code}/train.py": PathFact(exists=True, is_file=True, readable=True, remote=True,
                                          real=f"{code}/train.py", region="us-east-1", files=1)}
    return Facts(**{**f.__dict__, "paths": paths})


def test_the_base_cases_are_valid():
    assert check(base(), facts()) == []
    assert warnings(base(), facts()) == []
    spec = base(algorithm=framework(), parameters={"max_iter": "10"})
    assert check(spec, framework_facts()) == []


Case = tuple[str, Callable[[], tuple[JobRequest, Facts]], str, str]
CASES: list[Case] = [
    # engines (R13, R19)
    ("unknown-engine", lambda: (base(algorithm=framework("caffe2")), framework_facts()),
     "algorithm.engine", "unknown_engine"),
    ("unknown-engine-version", lambda: (base(algorithm=framework("pytorch", "0.4")), framework_facts()),
     "algorithm.engine_version", "unknown_engine_version"),
    ("caffe-two-nodes", lambda: (base(algorithm=framework("caffe", "1.0"), resources=Resources(node_count=2)),
                                 framework_facts()), "resources.node_count", "engine_single_node"),
    ("engine-alias-works-but-bad-version", lambda: (base(algorithm=framework("torch", "9")), framework_facts()),
     "algorithm.engine_version", "unknown_engine_version"),
    # presets (R12, R15)
    ("preset-missing-name", lambda: (base(algorithm=Algorithm(source="preset")), facts()),
     "algorithm.preset", "required"),
    ("preset-unknown", lambda: (base(algorithm=Algorithm(source="preset", preset="resnet")), facts()),
     "algorithm.preset", "unknown_preset"),
    ("preset-unknown-parameter", lambda: (base(parameters={"learning_rat": "0.1"}), facts()),
     "parameters.learning_rat", "unknown_parameter"),
    ("preset-int-not-int", lambda: (base(parameters={"n_estimators": "ten"}), facts()),
     "parameters.n_estimators", "invalid_parameter_value"),
    ("preset-int-float", lambda: (base(parameters={"n_estimators": "1.5"}), facts()),
     "parameters.n_estimators", "invalid_parameter_value"),
    ("preset-below-min", lambda: (base(parameters={"n_estimators": "0"}), facts()),
     "parameters.n_estimators", "invalid_parameter_value"),
    ("preset-above-max", lambda: (base(parameters={"test_size": "0.95"}), facts()),
     "parameters.test_size", "invalid_parameter_value"),
    ("preset-float-nan", lambda: (base(parameters={"C": "nan"}), facts()), "parameters.C", "invalid_parameter_value"),
    ("preset-choice", lambda: (base(parameters={"model": "svm"}), facts()), "parameters.model",
     "invalid_parameter_value"),
    ("preset-bool", lambda: (base(algorithm=Algorithm(source="preset", preset="torch-mlp"),
                                  parameters={"standardize": "maybe"}), facts()),
     "parameters.standardize", "invalid_parameter_value"),
    ("preset-several-paths", lambda: (base(data=[DataSource(path=S3_DATA), DataSource(path=S3_DATA + "2")]),
                                      facts()), "data", "several_data_paths"),
    # custom images (R14)
    ("custom-bad-image", lambda: (base(algorithm=Algorithm(source="custom", image="Not An Image!"), parameters={}),
                                  facts()), "algorithm.image", "invalid_image"),
    ("custom-several-paths", lambda: (base(algorithm=Algorithm(source="custom", image="me/t:1"), parameters={},
                                           data=[DataSource(path=S3_DATA), DataSource(path=S3_DATA + "2")]),
                                      facts()), "data", "several_data_paths"),
    # resources (R18, R19)
    ("unknown-pool", lambda: (base(resources=Resources(pool="tpu")), facts()), "resources.pool", "unknown_pool"),
    ("unknown-flavor", lambda: (base(resources=Resources(pool="cpu", flavor="gpu.t4")), facts()),
     "resources.flavor", "unknown_flavor"),
    ("never-fits-dedicated-pool", lambda: (base(resources=Resources(pool="team-a", node_count=5)), facts()),
     "resources.node_count", "pool_too_small"),
    ("dedicated-pool-of-another-account", lambda: (base(resources=Resources(pool="team-a")), facts()),
     "resources.pool", "pool_not_allowed"),
    # accounts (R5)
    ("account-in-arrears", lambda: (base(), facts(account=AccountFact("default", True, -0.01, "USD"))),
     "account", "account_in_arrears"),
    ("account-unknown", lambda: (base(account="nobody"), facts(account=AccountFact("nobody", False))),
     "account", "unknown_account"),
    # datasets (R10)
    ("dataset-unknown", lambda: (base(data=[DataSource(dataset="cifar", version="V001")]), facts()),
     "data[0].dataset", "dataset_not_found"),
    ("dataset-of-another-project", lambda: (base(account="team-a", data=[DataSource(dataset="mnist", version="V001")]),
                                            facts()),
     "data[0].dataset", "dataset_not_allowed"),
    ("dataset-version-unknown", lambda: (base(data=[DataSource(dataset="mnist", version="V009")]), facts()),
     "data[0].version", "dataset_version_not_found"),
    ("output-is-the-dataset-location", lambda: (base(data=[DataSource(dataset="mnist", version="V001")],
                                                     output_path="s3://data-bucket/mnist"), facts()),
     "output_path", "output_overlaps_data"),
    ("output-inside-the-dataset-location", lambda: (base(data=[DataSource(dataset="mnist", version="V001")],
                                                         output_path="s3://data-bucket/mnist/model"), facts()),
     "output_path", "output_overlaps_data"),
    # regions (R6)
    ("data-bucket-elsewhere", lambda: (base(), facts(paths={**facts().paths, S3_DATA: s3(region="eu-west-1")})),
     "data[0].path", "storage_region_mismatch"),
    ("output-bucket-elsewhere", lambda: (base(), facts(paths={**facts().paths,
                                                               S3_OUT: PathFact(remote=True, region="ap-east-1")})),
     "output_path", "storage_region_mismatch"),
    # file names (R7)
    ("all-names-too-long", lambda: (base(), facts(paths={**facts().paths, S3_DATA: s3(files=2, long_names=2)})),
     "data", "no_usable_data_files"),
    ("dataset-all-names-too-long", lambda: (base(data=[DataSource(dataset="mnist", version="V001")]),
                                            facts(datasets={"mnist": DatasetFact("s3://data-bucket/mnist",
                                                                                 {"V001": VersionFact(4, 4)})})),
     "data", "no_usable_data_files"),
    ("s3-data-empty", lambda: (base(), facts(paths={**facts().paths, S3_DATA: PathFact(remote=True)})),
     "data[0].path", "data_path_not_found"),
    # subscription (R20)
    ("topic-missing", lambda: (base(subscription=Subscription("nope", ["OnJobFailed"])), facts(topic_exists=False)),
     "subscription.topic", "unknown_topic"),
    ("event-unknown", lambda: (base(subscription=Subscription("team", ["OnJobExploded"])), facts()),
     "subscription.events[0]", "unknown_subscription_event"),
    # requirements (R13)
    ("requirements-escape", lambda: (base(algorithm=framework()), framework_facts(code=CodeScan(
        requirements_outside=True))), "algorithm.code_dir", "requirements_outside_code_dir"),
]


@pytest.mark.parametrize(("make", "field", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule(make, field, code):
    spec, known = make()
    violations = check(spec, known)
    assert (field, code) in {(v.field, v.code) for v in violations}, violations
    for v in violations:
        assert CODE_RE.match(v.code) and len(v.message) > 20 and v.field


def test_all_violations_at_once():
    spec = base(algorithm=framework("caffe", "9"), resources=Resources(pool="team-a", flavor="x", node_count=9),
                data=[DataSource(dataset="cifar", version="V001"), DataSource(path=S3_DATA)])
    known = framework_facts(account=AccountFact("default", True, -5, "USD"))
    got = {(v.field, v.code) for v in check(spec, known)}
    assert {("algorithm.engine_version", "unknown_engine_version"), ("resources.node_count", "engine_single_node"),
            ("resources.flavor", "unknown_flavor"), ("resources.node_count", "pool_too_small"),
            ("account", "account_in_arrears"), ("data[0].dataset", "dataset_not_found")} <= got


WARNINGS: list[Case] = [
    ("long-names-some", lambda: (base(), facts(paths={**facts().paths, S3_DATA: s3(files=5, long_names=2)})),
     "data[0].path", "long_file_names_skipped"),
    ("output-not-empty-s3", lambda: (base(), facts(paths={**facts().paths, S3_OUT: s3()})),
     "output_path", "output_not_empty"),
    ("cuda-on-cpu", lambda: (base(algorithm=framework("pytorch", "2.13")), framework_facts(code=CodeScan(
        cuda=(CodeFinding("train.py", 12, "model.cuda()"),), imports=frozenset({"torch"})))),
     "resources.flavor", "cuda_on_cpu_flavor"),
    ("engine-import-mismatch", lambda: (base(algorithm=framework("scikit-learn")), framework_facts(code=CodeScan(
        imports=frozenset({"torch", "numpy"})))), "algorithm.engine", "engine_import_mismatch"),
]


@pytest.mark.parametrize(("make", "field", "code"), [c[1:] for c in WARNINGS], ids=[c[0] for c in WARNINGS])
def test_warning(make, field, code):
    spec, known = make()
    assert check(spec, known) == []
    found = warnings(spec, known)
    assert (field, code) in {(w.field, w.code) for w in found}, found


def test_cuda_on_a_gpu_flavor_and_matching_imports_do_not_warn():
    scan = CodeScan(cuda=(CodeFinding("train.py", 3, "x.cuda()"),), imports=frozenset({"torch", "sklearn"}))
    spec = base(algorithm=framework("pytorch", "2.13"), resources=Resources(pool="gpu", flavor="gpu.t4"))
    assert warnings(spec, framework_facts(code=scan)) == []


def test_the_cuda_warning_names_file_and_line():
    scan = CodeScan(cuda=tuple(CodeFinding("m.py", n, "t.cuda()") for n in range(1, 9)), imports=frozenset())
    (w,) = warnings(base(algorithm=framework()), framework_facts(code=scan))
    assert "m.py:1: t.cuda()" in w.message and "3 more" in w.message


# ------------------------------------------------------------------------------ the code scan (real files)
def test_codescan_finds_cuda_lines_and_imports(tmp_path: Path):
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "train.py").write_text(
        "import torch\nfrom sklearn.svm import SVC\nfrom . import pkg\nimport pkg.util\n"
        "device = 'cuda' if torch.cuda.is_available() else 'cpu'  # a fallback: no warning\n"
        "# model.cuda()  a comment: no warning\n"
        "model = torch.nn.Linear(2, 2).cuda()\n"
        "x = torch.zeros(1, device=torch.device('cuda:0'))\n")
    (code / "pkg" / "util.py").write_text("import numpy as np\nimport tensorflow as tf\nwith tf.device('/GPU:0'):\n"
                                          "    pass\n")
    (code / "broken.py").write_text("def (:\n")
    scan = codescan.scan(str(code))
    assert [(f.file, f.line) for f in scan.cuda] == [("train.py", 7), ("train.py", 8), ("pkg/util.py", 3)]
    assert scan.imports == {"torch", "sklearn", "numpy", "tensorflow"}
    assert not scan.requirements_outside


def test_codescan_requirements_symlink_out_of_the_code_dir(tmp_path: Path):
    code = tmp_path / "code"
    code.mkdir()
    (tmp_path / "reqs.txt").write_text("numpy\n")
    (code / "requirements.txt").symlink_to(tmp_path / "reqs.txt")
    assert codescan.scan(str(code)).requirements_outside
    (code / "requirements.txt").unlink()
    (code / "requirements.txt").write_text("numpy\n")
    assert not codescan.scan(str(code)).requirements_outside


def test_every_code_is_documented_in_the_readme():
    readme = (Path(__file__).parents[2] / "services" / "validator" / "README.md").read_text()
    for *_, code in CASES + WARNINGS:
        assert f"`{code}`" in readme, code


def test_a_dedicated_pool_admits_its_accounts_only():
    outsider = check(base(resources=Resources(pool="team-a")), facts())
    [refusal] = [v for v in outsider if v.code == "pool_not_allowed"]
    assert refusal.message == ("pool team-a is dedicated to team-a, and account default is not one of them: use a pool "
                               "open to it (cpu, gpu), or run the job for one of those accounts (account)")
    member = base(resources=Resources(pool="team-a"), account="team-a")
    assert not [v for v in check(member, facts(account=AccountFact("team-a", True, 1.0, "USD")))
                if v.code == "pool_not_allowed"]
    assert not [v for v in check(base(), facts()) if v.code == "pool_not_allowed"], "a pool without accounts is open"


def test_a_catalog_naming_no_account_is_refused():
    text = """
pools:
  - name: team
    accounts: [team-a, "not an account!"]
    flavors: [{name: s, cpus: 1, memory_mb: 512, price_per_hour: 0}]
"""
    with pytest.raises(CatalogError, match="'not an account!' is no account name"):
        parse_resources(text)
    closed = parse_resources(text.replace(', "not an account!"', ""))
    assert closed.pools[0].admits("team-a") and not closed.pools[0].admits("team-b")
