"""Property-based fuzzing of request decoding, normalisation and validation (hypothesis): whatever
arrives, the answer is an error object (RequestError with an ErrorBody, or Violations), never a
crash.  Nothing here creates anything, so "never a half-created job" is the integration tests'
part (tests/integration/test_bad_input.py, test_registries.py)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.job_intake.core import check_name, normalise, with_overrides
from services.validator.facts import gather
from services.validator.model import AccountFact, DatasetFact, Facts, VersionFact
from services.validator.rules import check, warnings
from trainmaster.decoding import RequestError, decode_as
from trainmaster.messages import ErrorBody, JobRequest, NewVersionRequest, TemplateSave, TemplateUpdate, Violation

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=40), st.sampled_from(["s3://b/x", "/tmp", "file:///etc", "s3://", "../x",
                                                            "preset", "custom", "framework", "cpu", "gpu",
                                                            "sklearn-classifier", "torch-mlp", "V001", "caffe"]))
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)), max_leaves=12)
FIELDS = ["name", "description", "data", "algorithm", "parameters", "output_path", "log_path", "resources",
          "subscription", "billing_mode", "save_as", "account", "priority", "bogus"]
ALGO = st.fixed_dictionaries({}, optional={
    "source": st.sampled_from(["framework", "preset", "custom", "magic"]),
    "engine": st.sampled_from(["scikit-learn", "pytorch", "caffe", "nope", ""]),
    "engine_version": st.sampled_from(["1.5", "2.13", "1.0", "0"]),
    "preset": st.sampled_from(["sklearn-classifier", "xgboost-classifier", "torch-mlp", "x"]),
    "code_dir": st.sampled_from(["/tmp", "s3://b/code", "rel", "/nonexistent"]),
    "boot_file": st.sampled_from(["train.py", "/tmp/../etc/passwd", "s3://b/code/../x.py"]),
    "image": st.text(max_size=30)})
requests = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8),
    st.fixed_dictionaries({"name": st.text(max_size=70), "algorithm": ALGO}, optional={
        "data": st.lists(st.fixed_dictionaries({}, optional={
            "path": st.sampled_from(["/tmp", "s3://b/d", "obs://x", "", "rel"]),
            "dataset": st.sampled_from(["mnist", "nope", ""]), "version": st.sampled_from(["V001", "V9", ""])}),
            max_size=3),
        "parameters": st.dictionaries(st.text(max_size=10), st.one_of(st.integers(), st.floats(), st.text(max_size=10),
                                                                      st.booleans()), max_size=4),
        "resources": st.fixed_dictionaries({}, optional={"pool": st.sampled_from(["cpu", "gpu", "team-a", "x"]),
                                                        "flavor": st.sampled_from(["cpu.small", "gpu.t4", "zz"]),
                                                        "node_count": st.integers(-3, 2000)}),
        "output_path": st.sampled_from(["/tmp/out", "s3://b/d/out", "s3://b", "x"]),
        "save_as": st.fixed_dictionaries({"name": st.text(max_size=70)})}),
)
FACTS = Facts(datasets={"mnist": DatasetFact("s3://b/mnist", {"V001": VersionFact(3, 1)})},
              account=AccountFact("default", True, 1.0, "USD"), topic_exists=True, region="us-east-1")


def _is_error(body: ErrorBody) -> None:
    assert isinstance(body, ErrorBody) and body.code and body.message
    assert all(isinstance(v, Violation) and v.field and v.code and v.message for v in body.details)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_any_request_is_an_error_object_or_a_list_of_violations(body):
    raw = json.dumps(body).encode()
    try:
        spec = normalise(decode_as(raw, JobRequest, 256 * 1024))
        check_name(spec.name)
    except RequestError as err:
        _is_error(err.body)
        return
    for violations in (check(spec, gather(spec)), check(spec, FACTS), warnings(spec, FACTS)):
        assert all(isinstance(v, Violation) and v.field and v.code and v.message for v in violations)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_request_or_an_error(raw):
    for type_ in (JobRequest, NewVersionRequest, TemplateSave, TemplateUpdate):
        try:
            decode_as(raw, type_, 4096)
        except RequestError as err:
            _is_error(err.body)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=20), json_values, max_size=4))
def test_any_overrides_give_a_request_or_an_error(overrides):
    try:
        spec = with_overrides(JobRequest(name="a", parameters={"x": "1"}), overrides, 256 * 1024)
    except RequestError as err:
        _is_error(err.body)
        return
    check(normalise(spec), FACTS)
