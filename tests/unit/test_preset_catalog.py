"""The preset algorithms: the catalog and the scripts agree on every hyperparameter and default;
parameters are type-checked; a preset job maps to the framework job that runs it; the
scikit-learn preset trains for real on the iris sample (the others run through the stack in
tests/integration/test_presets.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from trainmaster.algorithms import PRESETS_DIR, as_framework, check_parameters, coerce, load_presets
from trainmaster.messages import Algorithm, DataSource, JobRequest

IRIS = Path(__file__).resolve().parents[2] / "examples" / "sklearn-iris" / "data"
CATALOG = load_presets()


def script(name: str):
    sys.path.insert(0, str(PRESETS_DIR))
    try:
        spec = importlib.util.spec_from_file_location(f"preset_{name}", PRESETS_DIR / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(PRESETS_DIR))


def test_at_least_three_presets_with_documented_parameters():
    assert {"sklearn-classifier", "xgboost-classifier", "torch-mlp"} <= {p.name for p in CATALOG.presets}
    for preset in CATALOG.presets:
        assert (PRESETS_DIR / preset.boot_file).is_file()
        assert "metrics.json" in preset.outputs
        assert preset.parameter("label_column") is not None
        for p in preset.parameters:
            assert p.doc and p.default is not None, (preset.name, p.name)
            coerce(p, p.default)  # every default passes its own check


@pytest.mark.parametrize("preset", CATALOG.presets, ids=lambda p: p.name)
def test_script_defaults_match_the_catalog(preset):
    parser = script(preset.boot_file).build_parser()
    defaults = vars(parser.parse_args(["--data_url", "d", "--train_url", "o"]))
    for p in preset.parameters:
        assert p.name in defaults, f"{preset.boot_file} has no --{p.name}"
        assert defaults[p.name] == p.default, (p.name, defaults[p.name], p.default)
    assert set(defaults) - {"data_url", "train_url"} == {p.name for p in preset.parameters}


def test_parameters_are_checked_against_the_entry():
    preset = CATALOG.preset("xgboost-classifier")
    ok = {"label_column": "y", "n_estimators": "10", "learning_rate": "0.05", "max_depth": "3"}
    assert check_parameters(preset, ok) == []
    bad = {"n_estimators": "-1", "learning_rate": "fast", "depth": "3", "max_depth": "2.0"}
    assert {(n, c) for n, c, _ in check_parameters(preset, bad)} == {
        ("n_estimators", "invalid_parameter_value"), ("learning_rate", "invalid_parameter_value"),
        ("depth", "unknown_parameter"), ("max_depth", "invalid_parameter_value")}


def test_a_preset_job_runs_as_a_framework_job_with_every_default():
    spec = JobRequest(name="x", data=[DataSource(path="/d")], algorithm=Algorithm(source="preset", preset="torch-mlp"),
                      parameters={"epochs": "3", "label_column": "species"})
    mapped = as_framework(spec, CATALOG)
    assert mapped.algorithm.source == "framework" and mapped.algorithm.engine == "pytorch"
    assert mapped.algorithm.boot_file == str(PRESETS_DIR / "torch_mlp.py")
    assert mapped.parameters["epochs"] == "3" and mapped.parameters["hidden_units"] == "64"
    assert mapped.parameters["standardize"] == "true"
    assert as_framework(mapped, CATALOG) is mapped
    with pytest.raises(LookupError):
        as_framework(JobRequest(algorithm=Algorithm(source="preset", preset="nope")), CATALOG)


def test_the_sklearn_preset_trains_and_writes_a_model_and_metrics(tmp_path):
    module = script("sklearn_classifier.py")
    sys.path.insert(0, str(PRESETS_DIR))
    try:
        module.main(["--data_url", str(IRIS), "--train_url", str(tmp_path), "--label_column", "species",
                     "--n_estimators", "20"])
    finally:
        sys.path.remove(str(PRESETS_DIR))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metrics"]["accuracy"] > 0.8 and metrics["classes"] == ["setosa", "versicolor", "virginica"]
    assert (tmp_path / "model.joblib").stat().st_size > 0


def test_a_missing_label_column_is_a_clear_error(tmp_path, capsys):
    module = script("sklearn_classifier.py")
    with pytest.raises(SystemExit) as exit_info:
        module.run(lambda: module.main(["--data_url", str(IRIS), "--train_url", str(tmp_path)]))
    assert exit_info.value.code == 2
    assert "no column 'label'" in capsys.readouterr().err
