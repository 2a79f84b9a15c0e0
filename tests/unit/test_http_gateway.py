"""The HTTP API's pure parts: error replies as problem details, bodies made of the path's names,
job feeds as Server-Sent Events, and the embedded stack's admin person."""

from __future__ import annotations

import json

import msgspec
import pytest

from services.api_gateway import problems, sse
from services.api_gateway.console import wants_page
from services.api_gateway.http import merged, query
from services.api_gateway.problems import Problem
from trainmaster import user_rules
from trainmaster.access import Credential, UserRecord
from trainmaster.bus import error_reply
from trainmaster.messages import Violation


@pytest.mark.parametrize(("code", "status"), [
    ("invalid_json", 400), ("unauthorized", 401), ("forbidden", 403), ("not_found", 404), ("conflict", 409),
    ("request_too_large", 413), ("invalid_request", 422), ("validation_failed", 422), ("unavailable", 503),
    ("internal", 500), ("something_new", 400)])
def test_each_error_code_has_its_status(code: str, status: int) -> None:
    problem = problems.of_reply(error_reply(code, "why", [Violation("account", code, "because")]))
    assert problem is not None and problem.status == status
    body = problem.body()
    assert body["type"] == f"urn:trainmaster:problem:{code}" and body["detail"] == "why"
    assert body["errors"] == [{"field": "account", "code": code, "message": "because"}]
    assert ("WWW-Authenticate" in problem.headers) == (code == "unauthorized")


def test_a_failed_job_comes_with_the_problem_and_other_replies_are_none() -> None:
    reply = msgspec.json.encode({"error": {"code": "validation_failed", "message": "bad", "details": []},
                                 "job": {"id": "job-1", "status": "Failed"}})
    problem = problems.of_reply(reply)
    assert problem is not None and problem.body()["job"]["id"] == "job-1"
    assert problems.of_reply(b'{"jobs": [], "total": 0}') is None
    assert problems.of_reply(b'{"error": "not the shape"}') is None


def test_validation_errors_name_the_parameter_not_where_it_was() -> None:
    problem = problems.of_validation([{"loc": ("query", "limit"), "type": "less_than_equal", "msg": "too big"}])
    assert problem.status == 422 and problem.errors == [{"field": "limit", "code": "less_than_equal",
                                                         "message": "too big"}]


def test_bodies_get_the_paths_names_and_refuse_another_value() -> None:
    assert json.loads(merged(b"", {"id": "job-1"})) == {"id": "job-1"}
    assert json.loads(merged(b'{"reason": "r", "id": "job-1"}', {"id": "job-1"})) == {"reason": "r", "id": "job-1"}
    for body, code, field in ((b"{nope", "invalid_json", "$"), (b"[1]", "invalid_request", "$"),
                              (b'{"id": "job-2"}', "invalid_request", "id")):
        with pytest.raises(Problem) as refused:
            merged(body, {"id": "job-1"})
        assert refused.value.code == code and refused.value.errors[0]["field"] == field
    assert json.loads(query(name="x", status=None, limit=5)) == {"name": "x", "limit": 5}


def test_feed_messages_are_sse_events_with_their_sequence_as_id() -> None:
    event = sse.of_event(b'{"type": "tm.job.pending"}', {"Tm-Seq": "7"})
    assert event == b'id: 7\nevent: event\ndata: {"type": "tm.job.pending"}\n\n'
    line = sse.of_line(b"epoch 1\r", {"Tm-Seq": "9", "Tm-Node": "0", "Tm-Stream": "stdout", "Tm-Line": "3"})
    head, data = line.split(b"data: ")
    assert head == b"id: 9\nevent: line\n"
    assert json.loads(data) == {"node": "0", "stream": "stdout", "text": "epoch 1\r", "line": 3}
    assert sse.frame("x", b"a\nb") == b"event: x\ndata: a\ndata: b\n\n"  # a line break never ends the event
    assert sse.end().startswith(b"event: end\n")


TOKEN = Credential("cred-1", "token", 1.0, token_hash="h1")
NEW = Credential("cred-2", "token", 2.0, token_hash="h2")


def test_the_stack_makes_its_admin_once_and_keeps_its_token() -> None:
    made = user_rules.stack_admin(None, None, TOKEN, 1.0)
    assert made is not None and made.cluster_admin and made.name == "admin" and made.credentials == [TOKEN]
    assert user_rules.stack_admin(made, "h1", NEW, 2.0) is None  # the token on file still opens it
    lost = user_rules.stack_admin(made, None, NEW, 2.0)  # the file is gone: one more token
    assert lost is not None and lost.credentials == [TOKEN, NEW]
    revoked = msgspec.structs.replace(made, credentials=[msgspec.structs.replace(TOKEN, revoked_at=3.0)])
    renewed = user_rules.stack_admin(revoked, "h1", NEW, 4.0)
    assert renewed is not None and renewed.credentials[-1] == NEW


def test_the_stack_never_makes_somebodys_admin_user_a_cluster_admin() -> None:
    theirs = UserRecord("admin", 1.0, roles={"team-a": "admin"}, created_by="user/ada")
    with pytest.raises(ValueError, match="did not make"):
        user_rules.stack_admin(theirs, None, NEW, 2.0)
    disabled = user_rules.stack_admin(None, None, TOKEN, 1.0)
    assert disabled is not None
    with pytest.raises(ValueError, match="disabled"):
        user_rules.stack_admin(msgspec.structs.replace(disabled, disabled_at=5.0), "h1", NEW, 6.0)


@pytest.mark.parametrize(("accept", "page"), [
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # a browser
    ("*/*", False), ("", False), ("application/json", False),
    ("text/html;q=0", False), ("application/json, text/html;q=0.5", True), ("TEXT/HTML", True),
    ("text/html;q=bad", True),
])
def test_only_a_browser_gets_the_console_at_the_root(accept: str, page: bool) -> None:
    assert wants_page(accept) is page
