"""Bad input against real job-intake and validator processes: every bad request gets an error
reply naming the field and the problem; no service crashes or stops consuming; nothing already
accepted is lost."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from support import (
    ServiceProcess,
    Services,
    assert_error,
    iris_job,
    read_stream,
    request_json,
    settled,
    subject_count,
)

from trainmaster.bus import ERROR_HEADER
from trainmaster.limits import MAX_DETAILS, MAX_FIELD_CHARS, MORE_VIOLATIONS, clip
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration

TOPO = Topology()
# the default limit (256 KiB), so that 100,000 levels of `[` fit and are refused for what they are
MAX_BYTES = 256 * 1024
DEEP = 100_000
DEEP_OBJECTS = 40_000  # `{"a":` is 5 bytes and `}` one more a level: as deep as fits under MAX_BYTES


@dataclass(frozen=True)
class Bad:
    """One bad request: what it sends, the error code, and the field and detail code named."""

    id: str
    body: bytes
    code: str
    field: str
    detail: str


def js(obj: object) -> bytes:
    return json.dumps(obj).encode()


def valid(**fields: object) -> dict:
    """A well-formed request body (paths need not exist: decoding comes before validation)."""
    spec: dict = {
        "name": "bad-input",
        "data": [{"path": "/tmp/data"}],
        "algorithm": {"engine": "scikit-learn", "code_dir": "/tmp/code", "boot_file": "train.py"},
        "output_path": "/tmp/out",
        "log_path": "/tmp/logs",
    }
    spec.update(fields)
    return spec


CREATE_CASES = [
    Bad("garbage-bytes", b"\x00\xff\xfe\x9c garbage \x81", "invalid_json", "$", "invalid_json"),
    Bad("invalid-json", b'{"name": "x", "data": [', "invalid_json", "$", "invalid_json"),
    Bad("not-utf8-in-string", b'{"name": "\xff\xfe"}', "invalid_json", "$", "invalid_json"),
    Bad("empty-body", b"", "invalid_json", "$", "empty"),
    Bad("blank-body", b"  \n\t ", "invalid_json", "$", "empty"),
    Bad("json-array", js([1, 2, 3]), "invalid_request", "$", "invalid_type"),
    Bad("json-null", b"null", "invalid_request", "$", "invalid_type"),
    Bad("name-wrong-type", js(valid(name=5)), "invalid_request", "name", "invalid_type"),
    Bad("node-count-string", js(valid(resources={"node_count": "two"})), "invalid_request",
        "resources.node_count", "invalid_type"),
    Bad("node-count-zero", js(valid(resources={"node_count": 0})), "invalid_request",
        "resources.node_count", "invalid_type"),
    Bad("data-not-a-list", js(valid(data={"path": "/tmp/data"})), "invalid_request", "data", "invalid_type"),
    Bad("data-path-wrong-type", js(valid(data=[{"path": 7}])), "invalid_request", "data[0].path", "invalid_type"),
    Bad("parameter-value-list", js(valid(parameters={"lr": [1, 2]})), "invalid_request", "parameters.lr",
        "invalid_type"),
    Bad("parameter-odd-key", js(valid(parameters={"ok": 1, "a b": {"x": 1}})), "invalid_request",
        'parameters["a b"]', "invalid_type"),
    Bad("unknown-field-top", js(valid(colour="red")), "invalid_request", "colour", "unknown_field"),
    Bad("unknown-field-nested", js(valid(algorithm={"engine": "scikit-learn", "bootfile": "x.py"})),
        "invalid_request", "algorithm.bootfile", "unknown_field"),
    Bad("unknown-field-in-list", js(valid(data=[{"path": "/tmp/data", "pth": "/x"}])), "invalid_request",
        "data[0].pth", "unknown_field"),
    Bad("subscription-missing-topic", js(valid(subscription={"events": ["OnJobFailed"]})), "invalid_request",
        "subscription.topic", "missing_field"),
    Bad("missing-name", js({k: v for k, v in valid().items() if k != "name"}), "invalid_request", "name",
        "required"),
    Bad("empty-name", js(valid(name="   ")), "invalid_request", "name", "required"),
    Bad("invalid-name", js(valid(name="my job!")), "invalid_request", "name", "invalid_name"),
    Bad("name-too-long", js(valid(name="n" * 65)), "invalid_request", "name", "invalid_name"),
    Bad("over-the-size-limit", js(valid(description="x" * MAX_BYTES)), "request_too_large", "$", "too_large"),
    # valid JSON that is no object
    Bad("json-string", b'"x"', "invalid_request", "$", "invalid_type"),
    Bad("json-number", b"42", "invalid_request", "$", "invalid_type"),
    Bad("json-true", b"true", "invalid_request", "$", "invalid_type"),
    Bad("json-empty-array", b"[]", "invalid_request", "$", "invalid_type"),
    # deep nesting: refused before any decode that would recurse once per level
    Bad("deep-arrays", b"[" * DEEP + b"]" * DEEP, "invalid_request", "$", "invalid_type"),
    Bad("deep-arrays-unclosed", b"[" * DEEP, "invalid_request", "$", "invalid_type"),
    Bad("deep-objects", b'{"a":' * DEEP_OBJECTS + b"1" + b"}" * DEEP_OBJECTS, "invalid_request", "a.a.a.a",
        "too_deep"),
    Bad("deep-objects-100k-over-the-limit", b'{"a":' * DEEP + b"1" + b"}" * DEEP, "request_too_large", "$",
        "too_large"),
    Bad("deep-arrays-in-parameters", js(valid(parameters={"p": "X"})).replace(b'"X"', b"[" * DEEP + b"]" * DEEP),
        "invalid_request", "parameters.p[0][0]", "too_deep"),
    Bad("deep-objects-in-parameters",
        js(valid(parameters="X")).replace(b'"X"', b'{"a":' * DEEP_OBJECTS + b"1" + b"}" * DEEP_OBJECTS),
        "invalid_request", "parameters.a.a.a", "too_deep"),
    Bad("deep-in-data", js(valid(data="X")).replace(b'"X"', b"[" + b'{"path":[' * 20_000),
        "invalid_request", "data[0].path[0]", "too_deep"),
    # one violation whose text alone would be most of the payload limit
    Bad("huge-unknown-key", js(valid(**{"k" * 200_000: 1})), "invalid_request", clip("k" * 200_000, MAX_FIELD_CHARS),
        "unknown_field"),
]

OTHER_VERB_CASES = [
    ("get", Bad("get-garbage", b"\x00\x01", "invalid_json", "$", "invalid_json")),
    ("get", Bad("get-no-id", b"{}", "invalid_request", "id", "missing_field")),
    ("get", Bad("get-id-wrong-type", js({"id": 42}), "invalid_request", "id", "invalid_type")),
    ("get", Bad("get-unknown-field", js({"id": "x", "verbose": True}), "invalid_request", "verbose",
                "unknown_field")),
    ("list", Bad("list-invalid-json", b"{", "invalid_json", "$", "invalid_json")),
    ("list", Bad("list-bad-status", js({"status": "Sleeping"}), "invalid_request", "status", "invalid_type")),
    ("list", Bad("list-limit-zero", js({"limit": 0}), "invalid_request", "limit", "invalid_type")),
    ("list", Bad("list-negative-offset", js({"offset": -1}), "invalid_request", "offset", "invalid_type")),
    ("list", Bad("list-too-large", js({"name": "x" * MAX_BYTES}), "request_too_large", "$", "too_large")),
    ("stop", Bad("stop-empty", b"", "invalid_json", "$", "empty")),
    ("stop", Bad("stop-id-wrong-type", js({"id": ["a"]}), "invalid_request", "id", "invalid_type")),
    ("stop", Bad("stop-unknown-field", js({"id": "x", "force": True}), "invalid_request", "force",
                 "unknown_field")),
]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def stack(module_nats_server: str, module_services: Services) -> dict[str, ServiceProcess]:
    started = module_services.start(module_nats_server, "job_intake", "validator",
                                    env={"TM_MAX_REQUEST_BYTES": str(MAX_BYTES)})
    return {svc.module: svc for svc in started}


@pytest.fixture
async def client(module_nats_server: str, stack: dict[str, ServiceProcess]) -> AsyncIterator[NATS]:
    nc = await nats.connect(module_nats_server, connect_timeout=5)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-input")


def assert_alive(stack: dict[str, ServiceProcess]) -> None:
    for svc in stack.values():
        assert svc.alive(), f"{svc.name} exited with {svc.proc.returncode if svc.proc else None}"


# ------------------------------------------------------------------------------ tm.jobs.create
@pytest.mark.parametrize("case", CREATE_CASES, ids=[c.id for c in CREATE_CASES])
async def test_create_answers_bad_input_with_an_error_naming_the_field(
    case: Bad, client: NATS, stack: dict[str, ServiceProcess]
) -> None:
    reply = await request_json(client, TOPO.jobs("create"), case.body)
    error = assert_error(reply, case.code, field=case.field, detail_code=case.detail)
    assert "job" not in reply, "nothing is created for a request that cannot be decoded"
    if case.field != "$":
        assert case.field in error["message"], error
    assert_alive(stack)


@pytest.mark.parametrize(("verb", "case"), OTHER_VERB_CASES, ids=[c.id for _, c in OTHER_VERB_CASES])
async def test_read_and_stop_answer_bad_input_with_an_error_naming_the_field(
    verb: str, case: Bad, client: NATS, stack: dict[str, ServiceProcess]
) -> None:
    reply = await request_json(client, TOPO.jobs(verb), case.body)
    assert_error(reply, case.code, field=case.field, detail_code=case.detail)
    assert_alive(stack)


# ------------------------------------------------------------------------------ tm.jobs.submit
SUBMIT_CASES = [c for c in CREATE_CASES if c.id in {
    "garbage-bytes", "invalid-json", "empty-body", "name-wrong-type", "unknown-field-nested", "missing-name",
    "invalid-name", "over-the-size-limit", "json-array", "json-null", "json-string", "json-number", "json-true",
    "deep-arrays", "deep-arrays-unclosed", "deep-objects", "deep-objects-100k-over-the-limit",
    "deep-arrays-in-parameters", "deep-objects-in-parameters", "deep-in-data", "huge-unknown-key",
}]


@pytest.mark.parametrize("case", SUBMIT_CASES, ids=[c.id for c in SUBMIT_CASES])
async def test_submit_of_bad_input_is_rejected_with_an_event(
    case: Bad, client: NATS, stack: dict[str, ServiceProcess]
) -> None:
    request_id = f"bad-{case.id}-{uuid.uuid4().hex[:8]}"
    ack = await client.jetstream().publish(TOPO.jobs_submit, case.body, headers={"Nats-Msg-Id": request_id})
    [(_, event)] = await read_stream(client, TOPO.request_events(request_id), count=1, timeout_s=15)
    # acked at once: not left to a retry (a nak would hold it pending for seconds, then redeliver)
    await settled(client, TOPO.stream_requests.name, TOPO.consumer_intake_submit.durable, past_seq=ack.seq,
                  timeout_s=5)
    assert event["specversion"] == "1.0"
    assert event["type"] == "tm.request.rejected"
    assert event["subject"] == request_id
    assert event["data"]["request_id"] == request_id
    assert event["data"].get("job") is None
    assert_error({"error": event["data"]["error"]}, case.code, field=case.field, detail_code=case.detail)
    assert_alive(stack)


# ------------------------------------------------------------------------------ every verb
# what no verb can take: each body, and the error every verb answers it with
NOT_A_REQUEST = [
    Bad("array", b"[]", "invalid_request", "$", "invalid_type"),
    Bad("string", b'"x"', "invalid_request", "$", "invalid_type"),
    Bad("number", b"42", "invalid_request", "$", "invalid_type"),
    Bad("null", b"null", "invalid_request", "$", "invalid_type"),
    Bad("true", b"true", "invalid_request", "$", "invalid_type"),
    Bad("deep-arrays", b"[" * DEEP + b"]" * DEEP, "invalid_request", "$", "invalid_type"),
    Bad("deep-objects", b'{"a":' * DEEP_OBJECTS + b"1" + b"}" * DEEP_OBJECTS, "invalid_request", "a.a.a.a",
        "too_deep"),
    Bad("deep-objects-100k", b'{"a":' * DEEP + b"1" + b"}" * DEEP, "request_too_large", "$", "too_large"),
]
EVERY_VERB = (
    [TOPO.jobs(v) for v in (*TOPO.job_verbs, "plan", "new_version")]
    + [getattr(TOPO, registry)(verb) for registry, verbs in TOPO.registry_subjects.items() for verb in verbs]
    + [TOPO.topics(v) for v in TOPO.topic_verbs]
    + [TOPO.agents_list]
)


@pytest.fixture(scope="module")
def every_service(module_nats_server: str, module_services: Services,
                  stack: dict[str, ServiceProcess]) -> dict[str, ServiceProcess]:
    """The scheduler (tm.agents.list) and the notifier (tm.topics.*) as well."""
    started = module_services.start(module_nats_server, "scheduler", "notifier",
                                    env={"TM_MAX_REQUEST_BYTES": str(MAX_BYTES)})
    return {**stack, **{svc.module: svc for svc in started}}


@pytest.mark.parametrize("subject", EVERY_VERB)
async def test_every_verb_answers_a_body_that_is_no_request_with_an_error(
    subject: str, client: NATS, every_service: dict[str, ServiceProcess]
) -> None:
    for case in NOT_A_REQUEST:
        reply = await request_json(client, subject, case.body)
        error = assert_error(reply, case.code, field=case.field, detail_code=case.detail)
        assert case.field in error["message"] or case.code == "request_too_large", error
    assert_alive(every_service)


# ------------------------------------------------------------------------------ many violations
def bad_parameters(work: Path, name: str, count: int) -> dict:
    """A job otherwise valid whose every one of ``count`` run parameters is refused (a newline in
    a value): ~17 bytes each in the request, ~150 in a violation, so 15,000 of them would be
    2 MB of violations, twice over (the list and the failure reason)."""
    spec = iris_job(work, name)
    spec["parameters"] = {f"p{i}": "a\nb" for i in range(count)}
    return spec


def assert_capped(details: list[dict], total: int, field: str) -> None:
    assert len(details) == MAX_DETAILS, len(details)
    last = details[-1]
    assert (last["field"], last["code"]) == (field, MORE_VIOLATIONS), last
    assert f"{total - MAX_DETAILS + 1} more violations left out" in last["message"], last
    assert f"{total} in all" in last["message"], last


async def test_a_job_with_thousands_of_violations_fails_with_a_bounded_reply_record_and_event(
    client: NATS, work: Path, stack: dict[str, ServiceProcess]
) -> None:
    count = 15_000
    spec = bad_parameters(work, f"many-params-{uuid.uuid4().hex[:6]}", count)
    assert len(js(spec)) <= MAX_BYTES
    reply = await request_json(client, TOPO.jobs("create"), spec, timeout_s=30)
    error = assert_error(reply, "validation_failed", field="parameters", detail_code=MORE_VIOLATIONS)
    assert_capped(error["details"], count, "parameters")
    assert all(d["code"] == "invalid_parameter_value" for d in error["details"][:-1])
    job = reply["job"]
    assert job["status"] == "Failed"

    record = await request_json(client, TOPO.jobs("get"), {"id": job["id"]})
    assert record["status"] == "Failed"
    assert_capped(record["violations"], count, "parameters")
    events = await read_stream(client, TOPO.job_events(job["id"]), until=lambda e: e["data"]["status"] == "Failed")
    assert [e["type"] for _, e in events] == ["tm.job.submitted", "tm.job.failed"]
    assert events[-1][1]["data"]["violations"] == record["violations"]
    assert_alive(stack)


async def test_a_submitted_job_with_thousands_of_violations_ends_failed(
    client: NATS, work: Path, stack: dict[str, ServiceProcess]
) -> None:
    count = 9_000
    spec = iris_job(work, f"many-data-{uuid.uuid4().hex[:6]}")
    spec["data"] = [{"path": f"relative/{i}"} for i in range(count)]  # each is relative_path
    request_id = f"many-{uuid.uuid4().hex[:8]}"
    await client.jetstream().publish(TOPO.jobs_submit, js(spec), headers={"Nats-Msg-Id": request_id})
    [(_, accepted)] = await read_stream(client, TOPO.request_events(request_id), count=1, timeout_s=15)
    assert accepted["type"] == "tm.request.accepted"
    job_id = accepted["data"]["job"]["id"]
    events = await read_stream(client, TOPO.job_events(job_id), until=lambda e: e["data"]["status"] == "Failed",
                               timeout_s=30)
    failed = events[-1][1]["data"]
    assert_capped(failed["violations"], count, "data")
    assert len(failed["reason"]) < 5000
    # the validator acked its work item: nothing left to redeliver, and job-intake acked the submission
    await settled(client, TOPO.stream_work.name, TOPO.consumer_validator.durable)
    await settled(client, TOPO.stream_requests.name, TOPO.consumer_intake_submit.durable)
    record = await request_json(client, TOPO.jobs("get"), {"id": job_id})
    assert record["status"] == "Failed" and record["violations"] == failed["violations"]
    assert_alive(stack)


async def test_plan_of_a_job_with_thousands_of_violations_is_bounded(client: NATS, work: Path) -> None:
    count = 15_000
    reply = await request_json(client, TOPO.jobs("plan"), bad_parameters(work, "many-plan", count), timeout_s=30)
    assert reply["valid"] is False, reply.get("error")
    assert_capped(reply["violations"], count, "parameters")


# ------------------------------------------------------------------------------ validation
async def test_a_missing_boot_file_fails_the_job_with_the_violation(client: NATS, work: Path) -> None:
    name = f"no-boot-{uuid.uuid4().hex[:6]}"
    spec = iris_job(work, name)
    spec["algorithm"]["boot_file"] = "does_not_exist.py"
    reply = await request_json(client, TOPO.jobs("create"), spec)
    error = assert_error(reply, "validation_failed", field="algorithm.boot_file", detail_code="boot_file_not_found")
    assert "does_not_exist.py" in error["message"]
    job = reply["job"]
    assert (job["name"], job["version"], job["status"]) == (name, "V001", "Failed")

    record = await request_json(client, TOPO.jobs("get"), {"id": job["id"]})
    assert record["status"] == "Failed"
    assert [(v["field"], v["code"]) for v in record["violations"]] == [("algorithm.boot_file", "boot_file_not_found")]
    assert "algorithm.boot_file" in record["failure_reason"]
    events = await read_stream(client, TOPO.job_events(job["id"]), until=lambda e: e["data"]["status"] == "Failed")
    assert [e["type"] for _, e in events] == ["tm.job.submitted", "tm.job.failed"]
    assert events[-1][1]["data"]["violations"] == record["violations"]


async def test_every_violation_is_reported_at_once(client: NATS, work: Path) -> None:
    spec = {"name": f"many-{uuid.uuid4().hex[:6]}", "algorithm": {"engine": "scikit-learn"},
            "data": [{"path": "relative/data"}]}
    reply = await request_json(client, TOPO.jobs("create"), spec)
    error = assert_error(reply, "validation_failed")
    fields = {d["field"] for d in error["details"]}
    assert fields >= {"data[0].path", "algorithm.code_dir", "algorithm.boot_file", "output_path", "log_path"}


async def test_a_poison_work_item_is_dead_lettered_and_the_validator_goes_on(
    client: NATS, work: Path, stack: dict[str, ServiceProcess]
) -> None:
    durable = TOPO.consumer_validator.durable
    poison = [b"\xff not a work item", b'{"job_id": "\xff\xfe"}', b'{"job_id": 5}', b"[]"]
    for body in poison:
        await client.jetstream().publish(TOPO.work_validate, body, stream=TOPO.stream_work.name)
    # dead-lettered at once, not after max_deliver retries
    letters = await read_dead_letters(client, TOPO.dlq(durable), len(poison))
    assert sorted(m.data for m in letters) == sorted(poison)
    assert all(m.headers[ERROR_HEADER].startswith("poison") for m in letters)
    assert_alive(stack)
    created = await request_json(client, TOPO.jobs("create"), iris_job(work, f"after-poison-{uuid.uuid4().hex[:6]}"))
    assert created["status"] == "Pending", "the validator still validates"


async def read_dead_letters(nc: NATS, subject: str, count: int, timeout_s: float = 5.0) -> list:
    sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
    try:
        return [await sub.next_msg(timeout=timeout_s) for _ in range(count)]
    finally:
        await sub.unsubscribe()


# ------------------------------------------------------------------------------ survival
async def test_after_all_of_it_the_services_live_answer_and_lost_nothing(
    client: NATS, work: Path, stack: dict[str, ServiceProcess]
) -> None:
    accepted = await request_json(client, TOPO.jobs("create"), iris_job(work, f"keeper-{uuid.uuid4().hex[:6]}"))
    assert accepted["status"] == "Pending"
    before = await request_json(client, TOPO.jobs("get"), {"id": accepted["id"]})

    # everything bad at once, concurrently, on every entry point
    creates = [request_json(client, TOPO.jobs("create"), c.body) for c in CREATE_CASES]
    others = [request_json(client, TOPO.jobs(verb), c.body) for verb, c in OTHER_VERB_CASES]
    replies = await asyncio.gather(*creates, *others)
    assert all("error" in r for r in replies)
    js_ = client.jetstream()
    for case in CREATE_CASES:
        await js_.publish(TOPO.jobs_submit, case.body, headers={"Nats-Msg-Id": f"flood-{case.id}-{uuid.uuid4().hex}"})

    # the submit consumer still consumes: a good submission behind the bad ones is accepted
    request_id = f"good-{uuid.uuid4().hex}"
    name = f"late-{uuid.uuid4().hex[:6]}"
    await js_.publish(TOPO.jobs_submit, js(iris_job(work, name)), headers={"Nats-Msg-Id": request_id})
    [(_, event)] = await read_stream(client, TOPO.request_events(request_id), count=1, timeout_s=20)
    assert event["type"] == "tm.request.accepted"
    assert event["data"]["job"]["name"] == name

    assert_alive(stack)
    after = await request_json(client, TOPO.jobs("get"), {"id": accepted["id"]})
    assert after == before, "an accepted job is untouched by the garbage"
    listed = await request_json(client, TOPO.jobs("list"), {"name": accepted["name"]})
    assert [j["id"] for j in listed["jobs"]] == [accepted["id"]]
    # nothing was dead-lettered by job-intake: bad requests are answered, not poison
    assert await subject_count(client, TOPO.stream_dlq.name, TOPO.dlq(TOPO.consumer_intake_submit.durable)) == 0
