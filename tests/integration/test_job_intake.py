"""job-intake (with the validator) as real processes: create, versions, idempotent submit, get,
list and stop, a Pending job's reason to wait, a dedicated pool's refusal, over the public
request/reply subjects with plain nats-py."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from support import Services, assert_error, iris_job, read_stream, request_json, subject_count, unique

from trainmaster.bus import make_broker
from trainmaster.jobstore import JobStore
from trainmaster.messages import Waiting
from trainmaster.settings import Settings
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration

TOPO = Topology()
SUMMARY_KEYS = {"id", "name", "version", "status", "created_at", "updated_at"}


@pytest.fixture(scope="module")
def intake(module_nats_server: str, module_services: Services) -> str:
    """job-intake and the validator (no scheduler: valid jobs stay Pending)."""
    module_services.start(module_nats_server, "job_intake", "validator")
    return module_nats_server


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture
async def client(intake: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(intake, connect_timeout=5)
    try:
        yield nc
    finally:
        await nc.close()



async def create(nc: NATS, spec: dict, request_id: str | None = None) -> dict:
    headers = {"Nats-Msg-Id": request_id} if request_id else None
    return await request_json(nc, TOPO.jobs("create"), spec, headers=headers)


async def get(nc: NATS, job_id: str) -> dict:
    return await request_json(nc, TOPO.jobs("get"), {"id": job_id})


async def list_jobs(nc: NATS, **query: object) -> dict:
    return await request_json(nc, TOPO.jobs("list"), query)


async def stop(nc: NATS, job_id: str, reason: str = "test stop") -> dict:
    return await request_json(nc, TOPO.jobs("stop"), {"id": job_id, "reason": reason})


# ------------------------------------------------------------------------------ create
async def test_create_gives_v001_then_v002_for_the_same_name(client: NATS, work: Path) -> None:
    name = unique("iris")
    first = await create(client, iris_job(work, name))
    assert set(first) >= SUMMARY_KEYS, first
    assert (first["name"], first["version"], first["status"]) == (name, "V001", "Pending")

    second = await create(client, iris_job(work, name))
    assert (second["name"], second["version"], second["status"]) == (name, "V002", "Pending")
    assert second["id"] != first["id"]

    other = await create(client, iris_job(work, unique("other")))
    assert other["version"] == "V001", "versions count per name"


async def test_create_retried_with_the_same_request_id_returns_the_same_job(client: NATS, work: Path) -> None:
    name = unique("retry")
    request_id = f"req-{uuid.uuid4().hex}"
    first = await create(client, iris_job(work, name), request_id)
    again = await create(client, iris_job(work, name), request_id)
    assert again["id"] == first["id"]
    assert again["version"] == "V001"
    listed = await list_jobs(client, name=name)
    assert listed["total"] == 1, listed


# ------------------------------------------------------------------------------ submit
async def test_submit_retried_with_the_same_msg_id_creates_one_job(client: NATS, work: Path) -> None:
    name = unique("submit")
    request_id = f"req-{uuid.uuid4().hex}"
    body = json.dumps(iris_job(work, name)).encode()
    js = client.jetstream()
    acks = [await js.publish(TOPO.jobs_submit, body, headers={"Nats-Msg-Id": request_id}) for _ in range(3)]
    assert [bool(a.duplicate) for a in acks] == [False, True, True]

    events = await read_stream(client, TOPO.request_events(request_id), count=1)
    _, event = events[0]
    assert event["specversion"] == "1.0"
    assert event["type"] == "tm.request.accepted"
    assert event["subject"] == request_id
    job = event["data"]["job"]
    assert (job["name"], job["version"]) == (name, "V001")
    assert event["data"].get("error") is None

    # the same request id on the request/reply path is the same request: the same job again
    same = await create(client, iris_job(work, name), request_id)
    assert same["id"] == job["id"]

    listed = await list_jobs(client, name=name)
    assert listed["total"] == 1, listed
    assert await subject_count(client, TOPO.stream_events.name, TOPO.request_events(request_id)) == 1
    record = await get(client, job["id"])
    assert record["request_id"] == request_id


# ------------------------------------------------------------------------------ get
async def test_get_returns_the_whole_record(client: NATS, work: Path) -> None:
    name = unique("get")
    created = await create(client, iris_job(work, name, parameters={"max_iter": 50, "C": 0.5}))
    record = await get(client, created["id"])
    assert record["id"] == created["id"]
    assert (record["name"], record["version"], record["status"]) == (name, "V001", "Pending")
    # normalised: parameter values are strings, the boot file a full path inside the code folder
    assert record["spec"]["parameters"] == {"max_iter": "50", "C": "0.5"}
    assert record["spec"]["algorithm"]["boot_file"].endswith("/code/train.py")
    assert [h["status"] for h in record["history"]] == ["Initializing", "Pending"]


async def test_get_of_an_unknown_id_is_not_found(client: NATS) -> None:
    reply = await get(client, "job-does-not-exist")
    assert_error(reply, "not_found", field="id")
    # an id KV could not even hold is just as unknown
    assert_error(await get(client, "../../etc/passwd"), "not_found", field="id")


# ------------------------------------------------------------------------------ list
async def test_list_filters_by_name_and_status_newest_first_with_paging(client: NATS, work: Path) -> None:
    name = unique("list")
    created = [await create(client, iris_job(work, name)) for _ in range(3)]
    await create(client, iris_job(work, unique("noise")))
    assert [c["version"] for c in created] == ["V001", "V002", "V003"]

    listed = await list_jobs(client, name=name)
    assert listed["total"] == 3
    assert [j["version"] for j in listed["jobs"]] == ["V003", "V002", "V001"], "newest first"
    assert all(set(j) >= SUMMARY_KEYS for j in listed["jobs"])

    page1 = await list_jobs(client, name=name, limit=2, offset=0)
    page2 = await list_jobs(client, name=name, limit=2, offset=2)
    assert [j["version"] for j in page1["jobs"]] == ["V003", "V002"]
    assert [j["version"] for j in page2["jobs"]] == ["V001"]
    assert page1["total"] == page2["total"] == 3
    assert (await list_jobs(client, name=name, limit=2, offset=3))["jobs"] == []

    await stop(client, created[1]["id"])
    stopped = await list_jobs(client, name=name, status="Stopped")
    pending = await list_jobs(client, name=name, status="Pending")
    assert [j["id"] for j in stopped["jobs"]] == [created[1]["id"]]
    assert [j["id"] for j in pending["jobs"]] == [created[2]["id"], created[0]["id"]]

    everything = await list_jobs(client)
    assert everything["total"] >= 4
    stamps = [(j["created_at"], j["id"]) for j in everything["jobs"]]
    assert stamps == sorted(stamps, reverse=True)
    # an empty body lists with the defaults
    assert (await request_json(client, TOPO.jobs("list"), b""))["total"] == everything["total"]


# ------------------------------------------------------------------------------ stop
async def test_stop_a_pending_job_then_again(client: NATS, work: Path) -> None:
    created = await create(client, iris_job(work, unique("stop")))
    assert created["status"] == "Pending"
    stopped = await stop(client, created["id"], "no longer needed")
    assert stopped["id"] == created["id"]
    assert stopped["status"] == "Stopped"

    record = await get(client, created["id"])
    assert record["status"] == "Stopped"
    assert record["history"][-1]["reason"] == "no longer needed"
    events = await read_stream(client, TOPO.job_events(created["id"]), until=lambda e: e["data"]["status"] == "Stopped")
    assert [e["type"] for _, e in events] == ["tm.job.submitted", "tm.job.pending", "tm.job.stopped"]

    # a stop retried (e.g. its reply was lost) is the same stop: the same answer, nothing written
    again = await stop(client, created["id"])
    assert (again["id"], again["status"]) == (created["id"], "Stopped")
    assert (await get(client, created["id"]))["history"] == record["history"]
    assert await subject_count(client, TOPO.stream_events.name, TOPO.job_events(created["id"])) == 3


async def test_stop_of_a_failed_job_is_a_conflict(client: NATS, work: Path) -> None:
    spec = iris_job(work, unique("invalid"))
    spec["algorithm"]["boot_file"] = "missing.py"
    reply = await create(client, spec)
    assert_error(reply, "validation_failed", field="algorithm.boot_file")
    job_id = reply["job"]["id"]
    assert_error(await stop(client, job_id), "conflict")
    assert (await get(client, job_id))["status"] == "Failed"


async def test_stop_of_an_unknown_id_is_not_found(client: NATS) -> None:
    assert_error(await stop(client, "job-nope"), "not_found", field="id")


# ------------------------------------------------------------------------------ why a job waits, who may use a pool
async def test_a_pending_jobs_reason_to_wait_is_in_its_record_without_an_event(
    intake: str, client: NATS, work: Path
) -> None:
    created = await create(client, iris_job(work, unique("wait")))
    assert created["status"] == "Pending"
    broker = make_broker("test-waiting", Settings(nats_url=intake))
    await broker.connect()
    try:  # play the scheduler: the one write path (JobStore.apply, the state machine)
        store = await JobStore(broker, TOPO, source="test").open()
        written = await store.apply(created["id"], Waiting("waiting", reason="waiting for capacity in pool cpu"))
        assert written.applied
        again = await store.apply(created["id"], Waiting("waiting", reason="waiting for capacity in pool cpu"))
        assert not again.applied, "the same reason again writes nothing"
    finally:
        await broker.stop()
    record = await get(client, created["id"])
    assert (record["status"], record["pending_reason"]) == ("Pending", "waiting for capacity in pool cpu")
    assert [h["status"] for h in record["history"]] == ["Initializing", "Pending"]
    assert await subject_count(client, TOPO.stream_events.name, TOPO.job_events(created["id"])) == 2, "no event"
    stopped = await stop(client, created["id"])
    assert stopped["status"] == "Stopped"
    assert (await get(client, created["id"]))["pending_reason"] is None, "a job that left Pending waits no more"


async def test_a_job_for_a_pool_dedicated_to_other_accounts_is_refused(client: NATS, work: Path) -> None:
    # the shipped catalog's pool team-a admits account team-a only
    reply = await create(client, iris_job(work, unique("outsider"), resources={"pool": "team-a", "node_count": 1}))
    error = assert_error(reply, "validation_failed", field="resources.pool", detail_code="pool_not_allowed")
    assert "dedicated to team-a" in error["message"]
