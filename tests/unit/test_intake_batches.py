"""What accepting submissions a batch at a time decides without a bus: each submission's request
id, the versions of a batch's new jobs, and what the server's answer to each pipelined write means;
and the plain-path shortcut of reading a location."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js import errors as js_errors

from services.job_intake.core import number_versions, submission_request_id
from trainmaster.locations import local_path, locate
from trainmaster.pubacks import EXPECTED_LAST_SUBJECT_SEQUENCE, cas_headers, read_puback


# ------------------------------------------------------------------------------ request ids
def test_a_submission_is_known_by_its_message_id_else_by_its_place_in_the_stream() -> None:
    assert submission_request_id({"Nats-Msg-Id": "req-1"}, "TM_REQUESTS", 7) == "req-1"
    assert submission_request_id({}, "TM_REQUESTS", 7) == "TM_REQUESTS-7"
    assert submission_request_id(None, "TM_REQUESTS", 7) == "TM_REQUESTS-7"
    assert submission_request_id({"Nats-Msg-Id": ""}, "TM_REQUESTS", 7) == "TM_REQUESTS-7"


# ------------------------------------------------------------------------------ versions
def test_the_jobs_of_one_name_get_consecutive_versions_from_the_first_taken_in_batch_order() -> None:
    names = ["iris", "wine", "iris", "iris", "wine"]
    assert number_versions(names, {"iris": 4, "wine": 1}) == ["V004", "V001", "V005", "V006", "V002"]


def test_numbering_a_batch_leaves_the_first_numbers_given_unchanged() -> None:
    firsts = {"iris": 1}
    number_versions(["iris", "iris"], firsts)
    assert firsts == {"iris": 1}


@given(st.lists(st.sampled_from(["a", "b", "c"]), max_size=50), st.integers(min_value=1, max_value=5000))
def test_each_name_takes_exactly_its_block_once(names: list[str], first: int) -> None:
    firsts = dict.fromkeys(set(names), first)
    versions = number_versions(names, firsts)
    for name in set(names):
        mine = [v for n, v in zip(names, versions, strict=True) if n == name]
        assert mine == [f"V{n:03d}" for n in range(first, first + names.count(name))]


# ------------------------------------------------------------------------------ PubAcks
def test_a_puback_gives_the_sequence_stored_at_a_duplicate_too() -> None:
    assert read_puback(b'{"stream":"TM_EVENTS","seq":42}') == 42
    assert read_puback(b'{"stream":"TM_EVENTS","seq":42,"duplicate":true}') == 42


@pytest.mark.parametrize("err_code", [10071, 10164])
def test_a_lost_compare_and_set_reads_as_nats_py_kv_error(err_code: int) -> None:
    error = read_puback(b'{"error":{"code":400,"err_code":%d,"description":"wrong last sequence: 5"}}' % err_code)
    assert isinstance(error, js_errors.KeyWrongLastSequenceError)
    assert "wrong last sequence" in str(error.description)


def test_any_other_refusal_is_an_api_error_with_the_servers_words() -> None:
    error = read_puback(b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}')
    assert type(error) is js_errors.APIError
    assert (error.code, error.err_code, error.description) == (503, 10077, "maximum messages exceeded")


def test_no_stream_for_the_subject_and_an_unreadable_answer_are_errors() -> None:
    assert isinstance(read_puback(b"", "503"), js_errors.NoStreamResponseError)
    assert isinstance(read_puback(b"not json"), js_errors.APIError)


def test_a_compare_and_set_write_names_the_revision_it_expects() -> None:
    assert cas_headers(0) == {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}
    assert cas_headers(17, {"Nats-Msg-Id": "x"}) == {"Nats-Msg-Id": "x", EXPECTED_LAST_SUBJECT_SEQUENCE: "17"}


# ------------------------------------------------------------------------------ locations
@pytest.mark.parametrize("raw", ["/data/iris", "/", "/a\x00b", "file:///data/x", "file://localhost/x", "s3://b/k",
                                 "relative/x", "", "//host/share", "/with space/ü"])
def test_the_plain_path_shortcut_reads_every_location_as_locate_does(raw: str) -> None:
    loc = locate(raw)
    assert local_path(raw) == (loc.path if loc.kind == "local" else raw)
