"""The audit trail's pure parts: who a request came from, and the entry ids that keep a retried
or redelivered action to one entry."""

from __future__ import annotations

import json

import msgspec
import pytest

from trainmaster import audit
from trainmaster.messages import AuditListRequest
from trainmaster.topology import Topology


def test_a_request_without_request_info_is_the_cluster_admin():
    assert audit.actor_of(None) == "cluster-admin"
    assert audit.actor_of({}) == "cluster-admin"
    assert audit.actor_of({"Nats-Msg-Id": "x"}) == "cluster-admin"


def test_a_request_for_a_token_nobody_holds_never_writes_the_token_down():
    assert audit.actor_of({"Tm-Token": "tmu_secret"}) == "api-token/unknown"


def test_a_request_from_another_account_names_its_account_and_user():
    info = {"acc": "ACME", "rtt": 1000, "user": "UABC", "name_tag": "alice"}
    assert audit.actor_of({"Nats-Request-Info": json.dumps(info)}) == "ACME/alice"
    del info["name_tag"]
    assert audit.actor_of({"Nats-Request-Info": json.dumps(info)}) == "ACME/UABC"
    assert audit.actor_of({"Nats-Request-Info": json.dumps({"acc": "ACME"})}) == "ACME/?"


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", "42"])
def test_an_unreadable_request_info_is_an_unknown_actor(raw):
    assert audit.actor_of({"Nats-Request-Info": raw}) == "unknown"


def test_entry_ids_are_the_same_for_the_same_action_and_key():
    first = audit.entry("cluster-admin", "job_create", "team", "job-1", at=1.0)
    retried = audit.entry("cluster-admin", "job_create", "team", "job-1", at=2.0)
    assert audit.entry_id(first, "job-1") == audit.entry_id(retried, "job-1")
    other = audit.entry("cluster-admin", "job_stop", "team", "job-1", at=1.0)
    refused = audit.entry("cluster-admin", "job_create", "team", "job-1", reason="no", at=1.0)
    ids = {audit.entry_id(e, "job-1") for e in (first, other, refused)}
    assert len(ids) == 3
    assert audit.entry_id(first, "job-2") != audit.entry_id(first, "job-1")
    assert refused.outcome == "refused" and first.outcome == "done"


def test_projects_and_subjects():
    assert audit.project_of("team.ml") == "team.ml"
    assert audit.project_of("no spaces") == audit.CLUSTER
    assert audit.project_of(None) == audit.CLUSTER
    topo = Topology()
    assert topo.audit("team.ml", "job_create") == "tm.audit.team~ml.job_create"
    assert topo.audit() == "tm.audit.*.*"
    assert topo.stream_audit.subjects == ("tm.audit.*.*",)
    assert topo.stream_audit.deny_delete and topo.stream_audit.deny_purge
    # the list verb is one token after "audit": the stream never stores a request
    assert topo.audit_list.count(".") == 2


def test_the_list_request_bounds():
    decode = msgspec.json.Decoder(AuditListRequest).decode
    assert decode(b'{"project": "@cluster"}').limit == 100
    for bad in (b'{"limit": 1001}', b'{"limit": 0}', b'{"project": "a b"}', b'{"since": -1}'):
        with pytest.raises(msgspec.ValidationError):
            decode(bad)


def test_a_body_is_read_loosely_and_never_raises() -> None:
    from trainmaster.audit import loose_body, refusal_of

    assert loose_body(b'{"name": "x"}') == {"name": "x"}
    for body in (b"", b"not json", b"[1, 2]", b"\xff\xfe", b"[" * 100_000, b'{"a":' * 50_000):
        assert loose_body(body) == {}
    assert refusal_of(b'{"error": {"code": "conflict", "message": "no"}}') == "no"
    assert refusal_of(b'{"id": "job-1"}') is None
