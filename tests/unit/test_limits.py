"""The bounds on bad input (trainmaster.limits, trainmaster.decoding): deep nesting is refused
before decoding, details and violations are capped with a final count of what was left out, and
every text is clipped, so that no error reply, record or event outgrows the payload limit."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainmaster.decoding import RequestError, decode_as, decode_empty
from trainmaster.limits import (
    MAX_DETAILS,
    MAX_FIELD_CHARS,
    MAX_JSON_DEPTH,
    MAX_MESSAGE_CHARS,
    MAX_REASON_CHARS,
    MORE_VIOLATIONS,
    bounded_error,
    cap_violations,
    clip,
    json_depth_violation,
)
from trainmaster.messages import ErrorBody, JobRecord, JobRequest, NewVersionRequest, Rejected, Violation
from trainmaster.statemachine import new_record, transition

DEEP = 100_000
# `{"a":` is 5 bytes a level and `}` one more: the deepest object nesting under MAX
DEEP_OBJECTS = 40_000
MAX = 256 * 1024


# ------------------------------------------------------------------------------ clip
@pytest.mark.parametrize("limit", [40, 100, 1000])
def test_clip_keeps_short_text_and_bounds_long_text(limit: int) -> None:
    assert clip("short", limit) == "short"
    long = "x" * (limit * 5)
    clipped = clip(long, limit)
    assert len(clipped) <= limit
    assert clipped.endswith(f"[{len(long)} characters in all]")
    assert clip(clipped, limit) == clipped


# ------------------------------------------------------------------------------ cap_violations
def many(n: int, code: str = "invalid_parameter_value", top: str = "parameters") -> list[Violation]:
    return [Violation(f"{top}.p{i}", code, f"value of p{i} holds a newline") for i in range(n)]


def test_a_short_list_is_kept_as_it_is() -> None:
    violations = many(MAX_DETAILS)
    assert cap_violations(violations) == violations


def test_a_long_list_ends_with_a_count_of_what_was_left_out() -> None:
    violations = many(5000)
    capped = cap_violations(violations)
    assert len(capped) == MAX_DETAILS
    assert capped[:-1] == violations[: MAX_DETAILS - 1]
    last = capped[-1]
    left_out = 5000 - (MAX_DETAILS - 1)
    assert (last.field, last.code) == ("parameters", MORE_VIOLATIONS), "names the field all the rest are in"
    assert f"{left_out} more violations left out ({left_out} invalid_parameter_value)" in last.message
    assert "5000 in all" in last.message and "fix the ones listed" in last.message


def test_the_last_detail_names_the_whole_request_when_the_rest_spans_fields() -> None:
    violations = many(150) + many(150, code="relative_path", top="data")
    last = cap_violations(violations)[-1]
    assert last.field == "$"
    assert "150 relative_path" in last.message and "invalid_parameter_value" in last.message


def test_long_texts_in_violations_are_clipped() -> None:
    key = "k" * 200_000
    [v] = cap_violations([Violation(f"parameters.{key}", "invalid_parameter_name", f"{key} is not a name")])
    assert len(v.field) <= MAX_FIELD_CHARS and len(v.message) <= MAX_MESSAGE_CHARS
    assert v.field.startswith("parameters.kkk")


violation_lists = st.lists(st.builds(Violation, st.text(max_size=300), st.sampled_from(["a", "b", "c"]),
                                     st.text(max_size=1200)), max_size=300)


@given(violation_lists)
def test_capping_is_bounded_and_idempotent(violations: list[Violation]) -> None:
    capped = cap_violations(violations)
    assert len(capped) == min(len(violations), MAX_DETAILS)
    assert all(len(v.field) <= MAX_FIELD_CHARS and len(v.message) <= MAX_MESSAGE_CHARS for v in capped)
    assert cap_violations(capped) == capped


def test_an_error_body_is_bounded() -> None:
    body = bounded_error(ErrorBody("validation_failed", "m" * 100_000, many(10_000)))
    assert len(body.message) <= MAX_REASON_CHARS and len(body.details) == MAX_DETAILS
    assert len(msgspec.json.encode(body)) < 200_000


def test_a_rejected_job_with_thousands_of_violations_keeps_a_bounded_record() -> None:
    spec = JobRequest(name="huge", parameters={f"p{i}": "a\nb" for i in range(20_000)})
    record = new_record(job_id="job-1", name="huge", version="V001", spec=spec, request_id="r", now=1.0)
    failed = transition(record, Rejected(change_id="verdict", violations=many(20_000)), now=2.0)
    assert failed.status.value == "Failed"
    assert len(failed.violations) == MAX_DETAILS and failed.violations[-1].code == MORE_VIOLATIONS
    assert failed.failure_reason is not None and len(failed.failure_reason) <= MAX_REASON_CHARS
    without_spec = msgspec.structs.replace(failed, spec=JobRequest(name="huge"))
    assert len(msgspec.json.encode(without_spec)) < 300_000
    assert msgspec.json.decode(msgspec.json.encode(failed), type=JobRecord) == failed


# ------------------------------------------------------------------------------ depth
@pytest.mark.parametrize(("body", "field"), [
    (b"[" * DEEP + b"]" * DEEP, "$[0][0][0][0]"),
    (b'{"a":' * DEEP + b"1" + b"}" * DEEP, "a.a.a.a"),
    (b'{"parameters": {"p": ' + b"[" * DEEP + b"]" * DEEP + b"}}", "parameters.p[0][0]"),
    (b'{"data": [{"path": "/x"}, ' + b"[" * DEEP, "data[1][0][0]"),
    (b'{"overrides": {"a.b": ' + b'{"k":' * DEEP, 'overrides["a.b"].k.k'),
])
def test_nesting_past_the_limit_is_found_and_located(body: bytes, field: str) -> None:
    found = json_depth_violation(body)
    assert found is not None
    assert (found.field, found.code) == (field, "too_deep")
    assert f"more than {MAX_JSON_DEPTH} levels" in found.message and "send flat values" in found.message


@pytest.mark.parametrize("body", [
    b"{}", b'{"a": [1, 2, {"b": [3]}]}', json.dumps({"name": "[" * DEEP}).encode(),  # brackets in a string
    b'{"a": "\\"[[[[' + b"[" * 200 + b'"}', b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH,
])
def test_shallow_bodies_and_brackets_inside_strings_pass(body: bytes) -> None:
    assert json_depth_violation(body) is None


def nested(depth: int) -> object:
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@given(st.integers(0, 2 * MAX_JSON_DEPTH))
def test_depth_agrees_with_the_structure(depth: int) -> None:
    assert (json_depth_violation(json.dumps(nested(depth)).encode()) is None) == (depth <= MAX_JSON_DEPTH)


# ------------------------------------------------------------------------------ decode_as
@pytest.mark.parametrize(("body", "code", "field", "detail"), [
    (b"[" * DEEP + b"]" * DEEP, "invalid_request", "$", "invalid_type"),
    (b"[" * DEEP, "invalid_request", "$", "invalid_type"),
    (b'{"a":' * DEEP_OBJECTS + b"1" + b"}" * DEEP_OBJECTS, "invalid_request", "a.a.a.a", "too_deep"),
    (b'{"a":' * DEEP + b"1" + b"}" * DEEP, "request_too_large", "$", "too_large"),
    (b'{"name": "x", "parameters": {"p": ' + b"[" * DEEP + b"]" * DEEP + b"}}", "invalid_request",
     "parameters.p[0][0]", "too_deep"),
    (b"[]", "invalid_request", "$", "invalid_type"),
    (b'"x"', "invalid_request", "$", "invalid_type"),
    (b"42", "invalid_request", "$", "invalid_type"),
    (b"null", "invalid_request", "$", "invalid_type"),
    (b"true", "invalid_request", "$", "invalid_type"),
])
@pytest.mark.parametrize("type_", [JobRequest, NewVersionRequest])
def test_decode_refuses_deep_and_non_object_bodies_at_once(body: bytes, code: str, field: str, detail: str,
                                                           type_: type) -> None:
    with pytest.raises(RequestError) as caught:
        decode_as(body, type_, MAX)
    err = caught.value.body
    assert (err.code, err.details[0].field, err.details[0].code) == (code, field, detail)
    assert err.message.startswith(f"{field}: ") or code == "request_too_large"
    if detail == "invalid_type":
        assert "send a JSON object" in err.details[0].message


def test_the_bad_key_of_a_large_mapping_is_named_quickly() -> None:
    params = {f"p{i}": 1 for i in range(20_000)} | {"zz": [1]}
    with pytest.raises(RequestError) as caught:
        decode_as(json.dumps({"name": "x", "parameters": params}).encode(), JobRequest, MAX)
    assert caught.value.body.details[0].field == "parameters.zz"


def test_a_huge_unknown_key_gives_a_bounded_error() -> None:
    body = json.dumps({"k" * 200_000: 1}).encode()
    with pytest.raises(RequestError) as caught:
        decode_as(body, JobRequest, MAX)
    err = caught.value.body
    assert err.details[0].code == "unknown_field" and err.details[0].field.startswith("kkk")
    assert len(msgspec.json.encode(err)) < 10_000


@pytest.mark.parametrize("body", [b"", b"  ", b"{}"])
def test_a_verb_without_arguments_takes_nothing_or_an_empty_object(body: bytes) -> None:
    decode_empty(body, MAX)


@pytest.mark.parametrize(("body", "field", "detail"), [
    (b"[]", "$", "invalid_type"), (b"42", "$", "invalid_type"), (b"null", "$", "invalid_type"),
    (b'{"limit": 5}', "limit", "unknown_field"), (b'{"a":' * DEEP_OBJECTS, "a.a.a.a", "too_deep"),
])
def test_a_verb_without_arguments_refuses_anything_else(body: bytes, field: str, detail: str) -> None:
    with pytest.raises(RequestError) as caught:
        decode_empty(body, MAX)
    assert (caught.value.body.details[0].field, caught.value.body.details[0].code) == (field, detail)
