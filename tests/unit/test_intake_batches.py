"""What accepting submissions a batch at a time decides without a bus: each submission's request
id and the versions of a batch's new jobs (what the server's answer to each pipelined write means:
test_pubacks.py); and the plain-path shortcut of reading a location."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.job_intake.core import number_versions, submission_request_id
from trainmaster.locations import local_path, locate


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


# ------------------------------------------------------------------------------ locations
@pytest.mark.parametrize("raw", ["/data/iris", "/", "/a\x00b", "file:///data/x", "file://localhost/x", "s3://b/k",
                                 "relative/x", "", "//host/share", "/with space/ü"])
def test_the_plain_path_shortcut_reads_every_location_as_locate_does(raw: str) -> None:
    loc = locate(raw)
    assert local_path(raw) == (loc.path if loc.kind == "local" else raw)
