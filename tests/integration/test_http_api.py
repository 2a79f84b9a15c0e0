"""The HTTP API against the running api-gateway: a real process with service credentials on a
secured bus, in front of job-intake and the validator (no scheduler: jobs stay Pending).  Every
request is answered as the bearer token's user, by the services (``Tm-Token``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from people_fixtures import TOPO, PeopleStack, people  # noqa: F401
from support import call, free_port, iris_job, unique

pytestmark = pytest.mark.integration


@dataclass
class Api:
    url: str
    boss: str  # a cluster admin's API token
    http: httpx.AsyncClient

    def as_(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
        headers = {**self.as_(token), **kwargs.pop("headers", {})}
        return await self.http.request(method, f"{self.url}{path}", headers=headers, **kwargs)


@pytest.fixture
async def api(people: PeopleStack) -> AsyncIterator[Api]:  # noqa: F811
    port = free_port()
    await people.services.astart(people.url, "api_gateway", env={
        "TM_NATS_CREDS": str(people.service_creds), "TM_HTTP_PORT": str(port), "TM_MAX_REQUEST_BYTES": "65536"})
    admin = await people.admin()
    made = await call(admin, TOPO.users("create"), {"name": "boss", "project": "default", "role": "admin",
                                                    "cluster_admin": True})
    async with httpx.AsyncClient(timeout=30) as http:
        yield Api(f"http://127.0.0.1:{port}/api/v1", made["token"], http)


def assert_problem(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert {"type", "title", "status", "detail", "code", "errors"} <= set(problem), problem
    assert problem["status"] == status and problem["code"] == code, problem
    assert "Traceback" not in response.text
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]], problem
    return problem


async def make_person(api: Api, name: str, project: str, role: str) -> dict:
    created = await api.call("POST", "/users", api.boss, json={"name": name, "project": project, "role": role})
    assert created.status_code == 201, created.text
    assert created.json()["token"].startswith("tmu_") and "jwt" not in created.json()
    return created.json()


async def test_a_member_works_on_its_projects_jobs_and_sees_no_other(api: Api, people: PeopleStack,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    admin = await people.admin()
    for project in ("team-a", "team-b"):
        await call(admin, TOPO.accounts("credit"), {"name": project, "amount": 50})
    alice = (await make_person(api, "alice", "team-a", "member"))["token"]
    me = await api.call("GET", "/whoami", alice)
    assert me.json() == {"user": "alice", "roles": {"team-a": "member"}, "cluster_admin": False,
                         "credential_id": me.json()["credential_id"]}

    spec = iris_job(tmp_path, unique("http"), account="team-a")
    created = await api.call("POST", "/jobs", alice, json=spec, headers={"Idempotency-Key": "once"})
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "Pending" and job["version"] == "V001"
    again = await api.call("POST", "/jobs", alice, json=spec, headers={"Idempotency-Key": "once"})
    assert again.json()["id"] == job["id"]  # the same request: the same job
    other = await call(admin, TOPO.jobs("create"), iris_job(tmp_path, unique("theirs"), account="team-b"),
                       headers={"Nats-Msg-Id": unique("create")})

    got = await api.call("GET", f"/jobs/{job['id']}", alice)
    assert got.status_code == 200 and got.json()["spec"]["account"] == "team-a"
    listed = (await api.call("GET", "/jobs", alice, params={"limit": 10})).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]] and listed["total"] == 1
    assert (await api.call("GET", "/jobs", api.boss)).json()["total"] == 2  # the cluster admin sees both
    plan = await api.call("POST", "/jobs/plan", alice, json=spec)
    assert plan.status_code == 200 and plan.json()["valid"] and plan.json()["price_per_hour"] > 0

    assert_problem(await api.call("GET", f"/jobs/{other['id']}", alice), 404, "not_found")
    assert_problem(await api.call("POST", f"/jobs/{other['id']}/stop", alice), 404, "not_found")
    theirs = iris_job(tmp_path, unique("nope"), account="team-b")
    assert_problem(await api.call("POST", "/jobs", alice, json=theirs), 403, "forbidden", "account")

    stopped = await api.call("POST", f"/jobs/{job['id']}/stop", alice, json={"reason": "enough"})
    assert stopped.status_code == 200 and stopped.json()["status"] in ("Stopping", "Stopped")
    pools = (await api.call("GET", "/pools", alice)).json()
    assert {"cpu", "gpu"} <= {p["name"] for p in pools["pools"]} and pools["currency"]
    assert pools["pools"][0]["flavors"][0]["price_per_hour"] > 0
    engines = (await api.call("GET", "/engines", alice)).json()["engines"]
    sklearn = next(e for e in engines if e["name"] == "scikit-learn")
    assert sklearn["versions"][0]["version"] and "sklearn" in sklearn["aliases"]
    assert not next(e for e in engines if e["name"] == "caffe")["distributed"]


async def test_no_token_a_wrong_one_and_a_revoked_one_are_401(api: Api) -> None:
    for headers in ({}, {"Authorization": "Basic YWxhZGRpbjpvcGVu"}, {"Authorization": "Bearer a b"}):
        response = await api.http.get(f"{api.url}/jobs", headers=headers)
        assert_problem(response, 401, "unauthorized", "Authorization")
        assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = await api.call("GET", "/jobs", "tmu_nobody-has-this-token")
    assert_problem(wrong, 401, "unauthorized")
    assert "invalid_token" in wrong.headers["www-authenticate"]

    bob = await make_person(api, "bob", "team-a", "viewer")
    assert (await api.call("GET", "/jobs", bob["token"])).status_code == 200
    revoked = await api.call("DELETE", f"/users/bob/credentials/{bob['token_id']}", bob["token"])
    assert revoked.status_code == 200, revoked.text
    started = time.monotonic()
    while (response := await api.call("GET", "/jobs", bob["token"])).status_code != 401:
        assert time.monotonic() - started < 1.0, "a revoked token still works after 1 s"
        await asyncio.sleep(0.05)
    assert_problem(response, 401, "unauthorized")
    # a person may not make itself, or anyone, a cluster admin
    carol = (await make_person(api, "carol", "team-a", "admin"))["token"]
    grab = await api.call("POST", "/users/carol/grant", carol, json={"cluster_admin": True})
    assert_problem(grab, 403, "forbidden", "cluster_admin")


async def test_bad_bodies_and_parameters_are_problems_naming_the_field(api: Api, tmp_path: Path) -> None:
    not_json = await api.call("POST", "/jobs", api.boss, content=b"{not json", headers={"content-type":
                                                                                        "application/json"})
    assert_problem(not_json, 400, "invalid_json", "$")
    huge = await api.call("POST", "/jobs", api.boss, content=b"x" * 70_000)
    assert_problem(huge, 413, "request_too_large")
    unknown = await api.call("POST", "/jobs", api.boss, json={**iris_job(tmp_path, "x"), "bogus": 1})
    assert_problem(unknown, 422, "invalid_request", "bogus")
    wrong_type = await api.call("POST", "/jobs/plan", api.boss, json={**iris_job(tmp_path, "x"), "description": 5})
    assert_problem(wrong_type, 422, "invalid_request", "description")
    no_object = await api.call("POST", "/jobs/job-1/stop", api.boss, json=[1, 2])
    assert_problem(no_object, 422, "invalid_request", "$")
    clash = await api.call("POST", "/jobs/job-1/stop", api.boss, json={"id": "job-2"})
    assert_problem(clash, 422, "invalid_request", "id")
    for params, field in (({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"offset": -1}, "offset"),
                          ({"limit": "many"}, "limit"), ({"status": "Sleeping"}, "status")):
        assert_problem(await api.call("GET", "/jobs", api.boss, params=params), 422, "invalid_request", field)
    resume = await api.call("GET", "/jobs/job-1/events", api.boss, headers={"Last-Event-ID": "x"})
    assert_problem(resume, 422, "invalid_request", "Last-Event-ID")
    assert_problem(await api.call("GET", "/nowhere", api.boss), 404, "not_found")
    assert_problem(await api.call("PUT", "/jobs", api.boss), 405, "method_not_allowed")
    assert_problem(await api.call("GET", "/jobs/job-nothing", api.boss), 404, "not_found")
    taken = await api.call("POST", "/users", api.boss, json={"name": "boss", "project": "default", "role": "viewer"})
    assert_problem(taken, 409, "conflict")


async def test_the_openapi_document_lists_every_route_and_resolves(api: Api) -> None:
    response = await api.http.get(f"{api.url}/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, methods in {"/jobs": {"get", "post"}, "/jobs/{id}": {"get"}, "/jobs/{id}/events": {"get"},
                          "/jobs/{id}/logs": {"get"}, "/jobs/{name}/versions": {"post"}, "/pools": {"get"},
                          "/engines": {"get"},
                          "/users/{name}/credentials/{credential_id}": {"delete"}, "/audit": {"get"}}.items():
        assert methods <= set(paths[f"/api/v1{path}"]), path
    assert len(paths) >= 30
    text = json.dumps(doc)
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs and refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])
    for path, item in paths.items():
        for method, operation in item.items():
            assert operation.get("summary"), (method, path)
    root = await api.http.get(api.url.removesuffix("/api/v1") + "/")
    assert root.json()["openapi"] == "/api/v1/openapi.json"


def sse_events(text: str) -> list[dict[str, str]]:
    """The events of a text/event-stream (comments skipped)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = fields[name] + "\n" + value if name in fields else value
        if fields:
            events.append(fields)
    return events


async def test_events_and_logs_are_server_sent_events_that_resume(api: Api, people: PeopleStack,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    admin = await people.admin()
    await call(admin, TOPO.accounts("credit"), {"name": "team-a", "amount": 50})
    viewer = (await make_person(api, "vera", "team-a", "viewer"))["token"]
    job = (await api.call("POST", "/jobs", api.boss, json=iris_job(tmp_path, unique("sse"), account="team-a"))).json()
    for n in (1, 2, 3):
        await admin.jetstream().publish(TOPO.logs(job["id"], "0"), f"line {n}".encode(), stream=TOPO.stream_logs.name,
                                        headers={"Tm-Stream": "stdout", "Tm-Line": str(n)})

    events = await api.call("GET", f"/jobs/{job['id']}/events", viewer)
    assert events.status_code == 200 and events.headers["content-type"].startswith("text/event-stream")
    frames = sse_events(events.text)
    assert frames[-1]["event"] == "end" and all(f["event"] == "event" for f in frames[:-1])
    assert json.loads(frames[-2]["data"])["data"]["status"] == "Pending" and frames[0]["id"].isdigit()

    logs = sse_events((await api.call("GET", f"/jobs/{job['id']}/logs", viewer)).text)
    lines = [json.loads(f["data"]) for f in logs if f["event"] == "line"]
    assert lines == [{"node": "0", "stream": "stdout", "text": f"line {n}", "line": n} for n in (1, 2, 3)]
    resumed = sse_events((await api.call("GET", f"/jobs/{job['id']}/logs", viewer,
                                         headers={"Last-Event-ID": logs[0]["id"]})).text)
    assert [json.loads(f["data"])["text"] for f in resumed if f["event"] == "line"] == ["line 2", "line 3"]
    tail = sse_events((await api.call("GET", f"/jobs/{job['id']}/logs", viewer, params={"tail": 1})).text)
    assert [json.loads(f["data"])["text"] for f in tail if f["event"] == "line"] == ["line 3"]

    # following: the lines come as they are written, and the stream ends once the job has
    async with api.http.stream("GET", f"{api.url}/jobs/{job['id']}/logs", params={"follow": "true", "after":
                               logs[-2]["id"]}, headers=api.as_(viewer)) as stream:
        assert stream.status_code == 200
        await admin.jetstream().publish(TOPO.logs(job["id"], "0"), b"line 4", stream=TOPO.stream_logs.name,
                                        headers={"Tm-Stream": "stdout", "Tm-Line": "4"})
        await api.call("POST", f"/jobs/{job['id']}/stop", api.boss)
        followed = sse_events((await asyncio.wait_for(stream.aread(), 30)).decode())
    assert [json.loads(f["data"])["text"] for f in followed if f["event"] == "line"] == ["line 4"]
    assert followed[-1]["event"] == "end"

    stranger = (await make_person(api, "sam", "team-b", "admin"))["token"]
    assert_problem(await api.call("GET", f"/jobs/{job['id']}/events", stranger), 404, "not_found")
    assert_problem(await api.call("GET", f"/jobs/{job['id']}/logs", None), 401, "unauthorized")
