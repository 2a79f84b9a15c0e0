"""What every route of the HTTP API shares: the caller's bearer token, the request body read
within its limit, a bus body made of path and query parameters, and the reply passed on as it
came.  The routes (routes.py) are one line of this each."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

import msgspec
from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api_gateway.problems import Problem, field_problem, missing_token
from services.api_gateway.upstream import Upstream
from trainmaster.bus import MSG_ID
from trainmaster.topology import Topology

TOKEN_TEXT = re.compile(r"^[A-Za-z0-9._~+/=-]{1,256}$")  # RFC 6750's token68, bounded
_bearer = HTTPBearer(auto_error=False, description="an API token (`tm.users.create` / `issue` hand them out; "
                     "the embedded stack's admin token is in <data_dir>/auth/admin.token)")


async def bearer_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The API token of ``Authorization: Bearer <token>``; 401 when there is none or it is malformed.
    Whether it is anyone's, the service that answers decides (it resolves ``Tm-Token``)."""
    if credentials is None:
        raise missing_token("send your API token as `Authorization: Bearer <token>`")
    if not TOKEN_TEXT.match(credentials.credentials):
        raise missing_token("the bearer token is malformed: send the token as it was issued (tmu_...)")
    return credentials.credentials


Token = Annotated[str, Depends(bearer_token)]


class Gateway:
    """The state every route uses: the services on the bus, the subjects, the body limit."""

    def __init__(self, upstream: Upstream, topo: Topology, max_bytes: int) -> None:
        self.upstream = upstream
        self.topo = topo
        self.max_bytes = max_bytes

    async def body(self, request: Request) -> bytes:
        """The request body, refused past ``TM_MAX_REQUEST_BYTES`` before it is all read."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large(self.max_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise too_large(self.max_bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    async def merged_body(self, request: Request, **named: Any) -> bytes:
        """The body with the path's names added (``{"id": ...}``); an empty body is ``{}``."""
        return merged(await self.body(request), named)

    async def answer(self, subject: str, body: bytes, token: str, *, status: int = 200,
                     headers: dict[str, str] | None = None) -> Response:
        return json_response(await self.upstream.ask(subject, body, token, headers), status)


async def gateway(request: Request) -> Gateway:
    # async, as every dependency here: FastAPI runs a plain function in a worker thread, which
    # cost about a third of a request's time
    return request.app.state.gateway


Api = Annotated[Gateway, Depends(gateway)]


def json_response(data: bytes, status: int = 200) -> Response:
    return Response(content=data, status_code=status, media_type="application/json")


def too_large(limit: int) -> Problem:
    message = f"the body is over {limit} bytes (TM_MAX_REQUEST_BYTES)"
    return Problem("request_too_large", message, [{"field": "$", "code": "request_too_large", "message": message}])


def merged(body: bytes, named: dict[str, Any]) -> bytes:
    return msgspec.json.encode(merged_object(body, named))


def merged_object(body: bytes, named: dict[str, Any]) -> dict[str, Any]:
    """``body`` (a JSON object, or nothing) with ``named`` added; a name the body gives otherwise
    is refused (which one was meant?)."""
    if not body.strip():
        obj: Any = {}
    else:
        try:
            obj = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            message = f"the body is not valid JSON: {exc}"
            raise Problem("invalid_json", message, [{"field": "$", "code": "invalid_json", "message": message}]) \
                from None
    if not isinstance(obj, dict):
        raise field_problem("$", "invalid_type", "the body must be a JSON object")
    for name, value in named.items():
        if name in obj and obj[name] != value:
            raise field_problem(name, "conflict", f"the path says {value!r}, the body {obj[name]!r}: leave it out "
                                "of the body")
        obj[name] = value
    return obj


def query(**given: Any) -> bytes:
    """A bus body of the query parameters given (those left out: the verb's defaults)."""
    return msgspec.json.encode({k: v for k, v in given.items() if v is not None})


def request_id(idempotency_key: str | None) -> dict[str, str]:
    """``Nats-Msg-Id`` of a create: the client's ``Idempotency-Key`` (a retry returns the job made
    the first time), else a fresh one."""
    return {MSG_ID: idempotency_key or f"http-{uuid.uuid4()}"}
