"""The routes of ``/api/v1``: each is one request on the bus, its body the bus body (the path's
names added, or the query's parameters), its reply passed on unchanged; an error reply becomes
its problem (problems.py).  services/api_gateway/README.md lists routes and subjects."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from nats.aio.msg import Msg

from services.api_gateway import sse
from services.api_gateway.http import Api, Token, merged_object, query, request_id
from services.api_gateway.openapi import body_of, problem_responses, reply_of, stream_reply
from services.api_gateway.problems import Problem, field_problem
from services.api_gateway.upstream import is_keepalive
from trainmaster import messages as m
from trainmaster import user_messages as um

router = APIRouter(prefix="/api/v1", responses=problem_responses())

Name = Annotated[str, Path(min_length=1, max_length=256)]
JobId = Annotated[str, Path(min_length=1, max_length=128, description="a job id (job-...)")]
Status = Literal["Initializing", "Pending", "Scheduled", "Running", "Stopping", "Succeeded", "Failed", "Stopped"]
IdempotencyKey = Annotated[str | None, Header(max_length=128, description="the request id: a retry with the same "
                                              "key returns the job made the first time (Nats-Msg-Id)")]


# ---------------------------------------------------------------- jobs
@router.post("/jobs", tags=["jobs"], status_code=201, summary="Create a job (tm.jobs.create)",
             openapi_extra=body_of(m.JobRequest), responses=reply_of(m.JobSummary, 201))
async def create_job(request: Request, api: Api, token: Token, idempotency_key: IdempotencyKey = None):
    return await api.answer(api.topo.jobs("create"), await api.body(request), token, status=201,
                            headers=request_id(idempotency_key))


@router.post("/jobs/plan", tags=["jobs"], summary="Plan a job: every violation and the price (tm.jobs.plan)",
             openapi_extra=body_of(m.JobRequest), responses=reply_of(m.PlanReply))
async def plan_job(request: Request, api: Api, token: Token):
    return await api.answer(api.topo.jobs("plan"), await api.body(request), token)


@router.get("/jobs", tags=["jobs"], summary="List jobs, newest first (tm.jobs.list)", responses=reply_of(m.ListReply))
async def list_jobs(api: Api, token: Token, status: Status | None = None,
                    name: Annotated[str | None, Query(max_length=64)] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0)] = 0):
    return await api.answer(api.topo.jobs("list"), query(status=status, name=name, limit=limit, offset=offset), token)


@router.get("/jobs/{id}", tags=["jobs"], summary="A job's record (tm.jobs.get)", responses=reply_of(m.JobRecord))
async def get_job(api: Api, token: Token, id: JobId):
    return await api.answer(api.topo.jobs("get"), query(id=id), token)


@router.post("/jobs/{id}/stop", tags=["jobs"], summary="Stop a job (tm.jobs.stop)",
             openapi_extra=body_of(None, "optional: {\"reason\": \"...\"}"), responses=reply_of(m.JobSummary))
async def stop_job(request: Request, api: Api, token: Token, id: JobId):
    return await api.answer(api.topo.jobs("stop"), await api.merged_body(request, id=id), token)


@router.post("/jobs/{name}/versions", tags=["jobs"], status_code=201,
             summary="Create the next version of a job (tm.jobs.new_version)",
             openapi_extra=body_of(None, "{\"overrides\"?: {\"dotted.path\": value}, \"dry_run\"?: false}; with "
                                   "dry_run the reply is the plan (200)"),
             responses=reply_of(m.JobSummary, 201))
async def new_version(request: Request, api: Api, token: Token, name: Name, idempotency_key: IdempotencyKey = None):
    body = merged_object(await api.body(request), {"name": name})
    dry_run = body.get("dry_run") is True
    return await api.answer(api.topo.jobs("new_version"), msgspec.json.encode(body), token,
                            status=200 if dry_run else 201, headers=None if dry_run else request_id(idempotency_key))


@router.get("/jobs/{id}/events", tags=["jobs"], summary="A job's events as Server-Sent Events (tm.jobs.events)",
            response_class=StreamingResponse, responses=stream_reply("event", "the CloudEvent"))
async def job_events(api: Api, token: Token, id: JobId, follow: bool = False,
                     after: Annotated[int | None, Query(ge=0, description="go on after this event id")] = None,
                     last_event_id: Annotated[str | None, Header()] = None):
    feed_query = {"id": id, "follow": follow, "after": resume_point(after, last_event_id)}
    return await event_stream(api, token, id, "events", feed_query, sse.of_event)


@router.get("/jobs/{id}/logs", tags=["jobs"], summary="A job's log lines as Server-Sent Events (tm.jobs.logs)",
            response_class=StreamingResponse, responses=stream_reply("line", "{\"node\", \"stream\", \"text\"}"))
async def job_logs(api: Api, token: Token, id: JobId, follow: bool = False,
                   node: Annotated[int | None, Query(ge=0, le=1023, description="one node's lines only")] = None,
                   tail: Annotated[int | None, Query(ge=0, le=100_000, description="the last lines only")] = None,
                   after: Annotated[int | None, Query(ge=0, description="go on after this event id")] = None,
                   last_event_id: Annotated[str | None, Header()] = None):
    feed_query = {"id": id, "follow": follow, "after": resume_point(after, last_event_id), "node": node, "tail": tail}
    return await event_stream(api, token, id, "logs", {k: v for k, v in feed_query.items() if v is not None},
                              sse.of_line)


def resume_point(after: int | None, last_event_id: str | None) -> int:
    """Where a stream goes on: after the client's ``Last-Event-ID`` (a reconnecting EventSource
    sends it), else after ``after``, else from the start."""
    if last_event_id is None:
        return after or 0
    if not last_event_id.strip().isdigit():
        raise field_problem("Last-Event-ID", "invalid", "an event id of this stream (a whole number) is expected")
    return int(last_event_id)


async def event_stream(api: Api, token: str, job_id: str, verb: str, feed_query: dict[str, Any],
                       render: Callable[[bytes, Mapping[str, str]], bytes]) -> StreamingResponse:
    # asked first, so that a job the caller may not see, or a refused token, is a problem with its
    # status rather than a stream that fails at once
    await api.upstream.ask(api.topo.jobs("get"), query(id=job_id), token)

    async def frames() -> AsyncIterator[bytes]:
        messages = api.upstream.feed(api.topo.jobs(verb), feed_query, token)
        async with contextlib.aclosing(messages):
            try:
                async for msg in messages:
                    yield sse.KEEPALIVE if is_keepalive(msg) else render(msg.data, _headers(msg))
            except Problem as problem:  # revoked meanwhile, or the role taken away
                yield sse.error(problem.encoded())
                return
        yield sse.end()

    return StreamingResponse(frames(), media_type=sse.MEDIA_TYPE,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _headers(msg: Msg) -> Mapping[str, str]:
    return msg.headers or {}


# ---------------------------------------------------------------- templates
@router.get("/templates", tags=["templates"], summary="List templates (tm.templates.list)",
            responses=reply_of(m.TemplateList))
async def list_templates(api: Api, token: Token):
    return await api.answer(api.topo.templates("list"), b"{}", token)


@router.get("/templates/{name}", tags=["templates"], summary="A template (tm.templates.get)",
            responses=reply_of(m.Template))
async def get_template(api: Api, token: Token, name: Name):
    return await api.answer(api.topo.templates("get"), query(name=name), token)


@router.put("/templates/{name}", tags=["templates"], summary="Save a job's spec as a template, replacing one of "
            "that name (tm.templates.save)", openapi_extra=body_of(m.TemplateSave, "name comes from the path"),
            responses=reply_of(m.Template))
async def save_template(request: Request, api: Api, token: Token, name: Name):
    return await api.answer(api.topo.templates("save"), await api.merged_body(request, name=name), token)


@router.patch("/templates/{name}", tags=["templates"], summary="Change a template (tm.templates.update)",
              openapi_extra=body_of(m.TemplateUpdate, "name comes from the path"), responses=reply_of(m.Template))
async def update_template(request: Request, api: Api, token: Token, name: Name):
    return await api.answer(api.topo.templates("update"), await api.merged_body(request, name=name), token)


@router.delete("/templates/{name}", tags=["templates"], summary="Delete a template (tm.templates.delete)")
async def delete_template(api: Api, token: Token, name: Name):
    return await api.answer(api.topo.templates("delete"), query(name=name), token)


# ---------------------------------------------------------------- datasets
@router.post("/datasets", tags=["datasets"], status_code=201, summary="Create a dataset (tm.datasets.create)",
             openapi_extra=body_of(m.DatasetCreate), responses=reply_of(m.Dataset, 201))
async def create_dataset(request: Request, api: Api, token: Token):
    return await api.answer(api.topo.datasets("create"), await api.body(request), token, status=201)


@router.get("/datasets", tags=["datasets"], summary="List datasets (tm.datasets.list)",
            responses=reply_of(m.DatasetList))
async def list_datasets(api: Api, token: Token):
    return await api.answer(api.topo.datasets("list"), b"{}", token)


@router.get("/datasets/{name}", tags=["datasets"], summary="A dataset and its versions (tm.datasets.get)",
            responses=reply_of(m.Dataset))
async def get_dataset(api: Api, token: Token, name: Name):
    return await api.answer(api.topo.datasets("get"), query(name=name), token)


@router.post("/datasets/{name}/versions", tags=["datasets"], status_code=201,
             summary="Publish a new immutable version (tm.datasets.publish)",
             openapi_extra=body_of(None, "optional: {\"description\": \"...\"}"),
             responses=reply_of(m.DatasetVersion, 201))
async def publish_dataset(request: Request, api: Api, token: Token, name: Name):
    return await api.answer(api.topo.datasets("publish"), await api.merged_body(request, name=name), token,
                            status=201)


@router.get("/datasets/{name}/versions/{version}", tags=["datasets"],
            summary="A version's manifest (tm.datasets.version)", responses=reply_of(m.DatasetVersion))
async def dataset_version(api: Api, token: Token, name: Name,
                          version: Annotated[str, Path(pattern=r"^V\d{3,}$", description="V001, V002, ...")]):
    return await api.answer(api.topo.datasets("version"), query(name=name, version=version), token)


# ---------------------------------------------------------------- catalogs: algorithms, pools, agents
@router.get("/algorithms", tags=["catalog"], summary="The preset algorithms (tm.algorithms.list)")
async def list_algorithms(api: Api, token: Token):
    return await api.answer(api.topo.algorithms("list"), b"{}", token)


@router.get("/algorithms/{name}", tags=["catalog"], summary="A preset algorithm (tm.algorithms.get)")
async def get_algorithm(api: Api, token: Token, name: Name):
    return await api.answer(api.topo.algorithms("get"), query(name=name), token)


@router.get("/pools", tags=["catalog"], summary="Resource pools, flavors and prices (tm.pools.list)",
            responses=reply_of(m.PoolList))
async def list_pools(api: Api, token: Token):
    return await api.answer(api.topo.pools_list, b"{}", token)


@router.get("/engines", tags=["catalog"], summary="The engines of the framework source and their versions "
            "(tm.engines.list)", responses=reply_of(m.EngineList))
async def list_engines(api: Api, token: Token):
    return await api.answer(api.topo.engines_list, b"{}", token)


@router.get("/agents", tags=["catalog"], summary="The executor agents (tm.agents.list)",
            responses=reply_of(m.AgentList))
async def list_agents(api: Api, token: Token):
    return await api.answer(api.topo.agents_list, b"{}", token)


# ---------------------------------------------------------------- accounts (projects)
@router.get("/accounts", tags=["accounts"], summary="List accounts (tm.accounts.list)",
            responses=reply_of(m.AccountList))
async def list_accounts(api: Api, token: Token):
    return await api.answer(api.topo.accounts("list"), b"{}", token)


@router.get("/accounts/{name}", tags=["accounts"], summary="An account: balance, ledger, quota, use (tm.accounts.get)",
            responses=reply_of(m.AccountDetail))
async def get_account(api: Api, token: Token, name: Name):
    return await api.answer(api.topo.accounts("get"), query(name=name), token)


@router.post("/accounts/{name}/credit", tags=["accounts"], summary="Credit an account (tm.accounts.credit)",
             openapi_extra=body_of(m.AccountCredit, "name comes from the path"), responses=reply_of(m.Account))
async def credit_account(request: Request, api: Api, token: Token, name: Name):
    return await api.answer(api.topo.accounts("credit"), await api.merged_body(request, name=name), token)


@router.put("/accounts/{name}/quota", tags=["accounts"], summary="Set an account's quota (tm.accounts.quota)",
            openapi_extra=body_of(m.AccountQuotaSet, "name comes from the path"), responses=reply_of(m.AccountDetail))
async def set_quota(request: Request, api: Api, token: Token, name: Name):
    return await api.answer(api.topo.accounts("quota"), await api.merged_body(request, name=name), token)


# ---------------------------------------------------------------- topics, subscriptions, deliveries
@router.post("/topics", tags=["topics"], status_code=201, summary="Create a topic (tm.topics.create)",
             openapi_extra=body_of(m.TopicCreate), responses=reply_of(m.TopicView, 201))
async def create_topic(request: Request, api: Api, token: Token):
    return await api.answer(api.topo.topics("create"), await api.body(request), token, status=201)


@router.get("/topics", tags=["topics"], summary="List topics (tm.topics.list)", responses=reply_of(m.TopicList))
async def list_topics(api: Api, token: Token):
    return await api.answer(api.topo.topics("list"), b"{}", token)


@router.get("/topics/{name}", tags=["topics"], summary="A topic (tm.topics.get)", responses=reply_of(m.TopicView))
async def get_topic(api: Api, token: Token, name: Name):
    return await api.answer(api.topo.topics("get"), query(name=name), token)


@router.delete("/topics/{name}", tags=["topics"], summary="Delete a topic (tm.topics.delete)")
async def delete_topic(api: Api, token: Token, name: Name, force: bool = False):
    return await api.answer(api.topo.topics("delete"), query(name=name, force=force), token)


@router.post("/topics/{name}/subscriptions", tags=["topics"], status_code=201,
             summary="Subscribe a webhook or an email address (tm.topics.subscribe)",
             openapi_extra=body_of(None, "{\"protocol\": \"webhook\"|\"email\", \"endpoint\", \"secret\"?}; "
                                   "the secret is in this reply only"),
             responses=reply_of(m.SubscriptionView, 201))
async def subscribe(request: Request, api: Api, token: Token, name: Name):
    return await api.answer(api.topo.topics("subscribe"), await api.merged_body(request, topic=name), token,
                            status=201)


@router.get("/topics/{name}/subscriptions", tags=["topics"],
            summary="A topic's subscriptions (tm.topics.subscriptions)", responses=reply_of(m.SubscriptionList))
async def subscriptions(api: Api, token: Token, name: Name):
    return await api.answer(api.topo.topics("subscriptions"), query(name=name), token)


@router.delete("/topics/{name}/subscriptions/{subscription_id}", tags=["topics"],
               summary="Unsubscribe (tm.topics.unsubscribe)")
async def unsubscribe(api: Api, token: Token, name: Name, subscription_id: Name):
    return await api.answer(api.topo.topics("unsubscribe"), query(topic=name, subscription_id=subscription_id), token)


@router.get("/topics/{name}/deliveries", tags=["topics"], summary="A topic's deliveries (tm.topics.deliveries)",
            responses=reply_of(m.DeliveryList))
async def deliveries(api: Api, token: Token, name: Name, dead: bool = False,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    return await api.answer(api.topo.topics("deliveries"), query(topic=name, dead=dead, limit=limit), token)


# ---------------------------------------------------------------- users and tokens
@router.post("/users", tags=["users"], status_code=201, summary="Create a user with an API token (tm.users.create)",
             openapi_extra=body_of(um.UserCreate, "over HTTP leave public_key out: the reply's token is the new "
                                   "user's API token; NATS credentials come from the CLI (trainmaster user issue)"),
             responses=reply_of(um.UserCreated, 201))
async def create_user(request: Request, api: Api, token: Token):
    return await api.answer(api.topo.users("create"), await api.body(request), token, status=201)


@router.get("/users", tags=["users"], summary="List the users one may see (tm.users.list)",
            responses=reply_of(um.UserList))
async def list_users(api: Api, token: Token, project: Annotated[str | None, Query(max_length=64)] = None):
    return await api.answer(api.topo.users("list"), query(project=project), token)


@router.get("/whoami", tags=["users"], summary="Who this token is (tm.users.whoami)", responses=reply_of(um.WhoAmI))
async def whoami(api: Api, token: Token):
    return await api.answer(api.topo.users("whoami"), b"{}", token)


@router.get("/users/{name}", tags=["users"], summary="A user (tm.users.get)", responses=reply_of(um.UserView))
async def get_user(api: Api, token: Token, name: Name):
    return await api.answer(api.topo.users("get"), query(name=name), token)


@router.post("/users/{name}/grant", tags=["users"], summary="Set a role, or the cluster admin flag (tm.users.grant)",
             openapi_extra=body_of(um.UserGrant, "name comes from the path"), responses=reply_of(um.UserView))
async def grant(request: Request, api: Api, token: Token, name: Name):
    return await api.answer(api.topo.users("grant"), await api.merged_body(request, name=name), token)


@router.post("/users/{name}/credentials", tags=["users"], status_code=201,
             summary="Issue a credential: {\"kind\": \"token\"} (tm.users.issue)",
             openapi_extra=body_of(um.UserIssue, "name comes from the path"),
             responses=reply_of(um.IssuedCredential, 201))
async def issue(request: Request, api: Api, token: Token, name: Name):
    return await api.answer(api.topo.users("issue"), await api.merged_body(request, name=name), token, status=201)


@router.delete("/users/{name}/credentials/{credential_id}", tags=["users"],
               summary="Revoke one credential (tm.users.revoke)", responses=reply_of(um.UserView))
async def revoke(api: Api, token: Token, name: Name, credential_id: Name):
    return await api.answer(api.topo.users("revoke"), query(name=name, credential_id=credential_id), token)


@router.delete("/users/{name}", tags=["users"], summary="Disable a user: every credential (tm.users.revoke)",
               responses=reply_of(um.UserView))
async def disable(api: Api, token: Token, name: Name):
    return await api.answer(api.topo.users("revoke"), query(name=name), token)


# ---------------------------------------------------------------- the audit trail
@router.get("/audit", tags=["audit"], summary="The newest audit entries, oldest first (tm.audit.list)",
            responses=reply_of(m.AuditList))
async def audit(api: Api, token: Token, project: Annotated[str | None, Query(max_length=64)] = None,
                since: Annotated[float | None, Query(ge=0)] = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    return await api.answer(api.topo.audit_list, query(project=project, since=since, limit=limit), token)

