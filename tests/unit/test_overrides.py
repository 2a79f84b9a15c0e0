"""Overrides (templates, new versions): dotted paths into a job spec, bad ones named precisely."""

from __future__ import annotations

import pytest

from services.job_intake.core import set_path, with_overrides
from trainmaster.decoding import RequestError
from trainmaster.messages import DataSource, JobRequest


def test_set_path_creates_and_indexes():
    tree = {"data": [{"path": "/a"}], "parameters": {}}
    set_path(tree, "parameters.lr", 0.1)
    set_path(tree, "data.0.path", "/b")
    set_path(tree, "resources.node_count", 2)
    assert tree == {"data": [{"path": "/b"}], "parameters": {"lr": 0.1}, "resources": {"node_count": 2}}


@pytest.mark.parametrize("path", ["", "a..b", "data.5.path", "data.x", "name.first"])
def test_bad_paths_are_errors(path):
    with pytest.raises(ValueError):
        set_path({"data": [{}], "name": "n"}, path, 1)


def test_with_overrides_decodes_again_and_names_the_field():
    spec = JobRequest(name="a", data=[DataSource(path="/d")], parameters={"x": "1"})
    out = with_overrides(spec, {"parameters.y": 2, "description": "v2"}, 10_000)
    assert out.parameters == {"x": "1", "y": 2} and out.description == "v2" and out.data == spec.data
    with pytest.raises(RequestError) as err:
        with_overrides(spec, {"resources.node_count": "many"}, 10_000)
    assert err.value.body.details[0].field == "resources.node_count"
    with pytest.raises(RequestError) as err:
        with_overrides(spec, {"algorithm.bogus": 1}, 10_000)
    assert err.value.body.details[0].code == "unknown_field"
    with pytest.raises(RequestError) as err:
        with_overrides(spec, {"data.3.path": "/x"}, 10_000)
    assert err.value.body.details[0].code == "invalid_override"
