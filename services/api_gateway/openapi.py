"""The OpenAPI document of ``/api/v1``: FastAPI makes it from the route declarations; the bodies
and replies are the bus's message types, whose JSON Schema (the same as docs/schemas/) is added
as components, so a body is described exactly as the service that decodes it sees it."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.api_gateway.problems import MEDIA_TYPE as PROBLEM
from services.api_gateway.sse import MEDIA_TYPE as EVENT_STREAM
from trainmaster.schemas import PUBLIC_TYPES

REF = "#/components/schemas/{name}"
SCHEMAS = "docs/schemas/ in the repository"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; `errors` is the bus's [{field, code, message}] list",
    "required": ["type", "title", "status", "detail", "code", "errors"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "code": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "code": {"type": "string"}, "message": {"type": "string"}}}},
        "job": {"type": "object", "description": "validation_failed: the job, created Failed"},
    },
}


def ref(type_: type) -> dict[str, str]:
    return {"$ref": REF.format(name=type_.__name__)}


def body_of(type_: type | None, note: str = "") -> dict[str, Any]:
    """A route's request body: the bus message type's schema (None: a JSON object the note describes)."""
    schema: dict[str, Any] = ref(type_) if type_ is not None else {"type": "object"}
    described = f"the bus body; {note}" if note else "the bus body, as it is"
    return {"requestBody": {"required": type_ is not None, "description": f"{described} (schemas: {SCHEMAS})",
                            "content": {"application/json": {"schema": schema}}}}


def reply_of(type_: type, status: int = 200) -> dict[int | str, Any]:
    return {status: {"description": "the service's reply, as it is",
                     "content": {"application/json": {"schema": ref(type_)}}}}


def stream_reply(event: str, data: str) -> dict[int | str, Any]:
    return {200: {"description": f"text/event-stream: one `event: {event}` per message, `id:` its sequence "
                                 f"(send it back as Last-Event-ID to go on), `data:` {data}; `: keepalive` "
                                 "comments while a follow is quiet; last `event: end` (or `event: error` with "
                                 "a problem when the caller lost the right meanwhile)",
                  "content": {EVENT_STREAM: {"schema": {"type": "string"}}}}}


def problem_responses() -> dict[int | str, Any]:
    content = {PROBLEM: {"schema": {"$ref": REF.format(name="Problem")}}}
    return {"4XX": {"description": "a problem: 400 not JSON, 401 no or unknown token, 403 not allowed, 404 not "
                                   "found (or not yours to see), 409 conflict, 413 too large, 422 invalid",
                    "content": content},
            "5XX": {"description": "a problem: the services are down (503) or slow (504)", "content": content}}


def document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, made once."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                          tags=app.openapi_tags)
        _, components = msgspec.json.schema_components(list(PUBLIC_TYPES.values()), ref_template=REF)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(components)
        schemas["Problem"] = PROBLEM_SCHEMA
        app.openapi_schema = doc
    return app.openapi_schema
