"""api-gateway: the public contract as JSON over HTTP.  It holds no state: each route is one
request on the bus (routes.py), asked as the caller's API token (``Tm-Token``); any number of
gateways may run, on any host with service credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from services.api_gateway import openapi
from services.api_gateway.console import ASSETS, wants_page
from services.api_gateway.http import Gateway, json_response
from services.api_gateway.problems import MEDIA_TYPE, Problem, of_validation
from services.api_gateway.routes import router
from services.api_gateway.upstream import Upstream
from trainmaster import bus
from trainmaster.settings import Settings
from trainmaster.topology import Topology

log = structlog.get_logger()
PREFIX = "/api/v1"
DESCRIPTION = """The public contract of trainmaster (docs/contract.md) over HTTP.

Authenticate with `Authorization: Bearer <API token>`. Each route is one request on the bus,
answered as the token's user; bodies are the bus bodies (docs/schemas/), errors are RFC 9457
problem details whose `errors` list the bus's `{field, code, message}`. A job's events and logs
are Server-Sent Events."""


def problem_response(problem: Problem) -> Response:
    return Response(problem.encoded(), status_code=problem.status or 400, media_type=MEDIA_TYPE,
                    headers=problem.headers)


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def on_invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response(of_validation(exc.errors()))


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        problem = Problem("not_found", f"no route {request.url.path}: see {PREFIX}/openapi.json", status=404)
    elif exc.status_code == 405:
        problem = Problem("method_not_allowed", f"{request.method} is not a method of {request.url.path}", status=405)
    else:
        problem = Problem("invalid_request", str(exc.detail), status=exc.status_code)
    problem.headers.update(exc.headers or {})
    return problem_response(problem)


async def on_crash(request: Request, exc: Exception) -> Response:
    """Anything unforeseen: logged with its trace, answered without it."""
    log.exception("request failed", method=request.method, path=request.url.path)
    return problem_response(Problem("internal", "internal error: the gateway's log has the details"))


def make_app(settings: Settings) -> FastAPI:
    topo = Topology(prefix=settings.bus.subject_prefix, replicas=settings.bus.stream_replicas)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # reconnect for ever: requests meanwhile answer 503/504, the gateway itself stays
        nc = await bus.connect(settings, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        app.state.nc = nc
        app.state.gateway = Gateway(Upstream(nc, settings.http.http_bus_timeout_s), topo,
                                    settings.api.max_request_bytes)
        log.info("service started", nats=settings.bus.nats_url,
                 http=f"http://{settings.http.http_host}:{settings.http.http_port}{PREFIX}")
        try:
            yield
        finally:
            await nc.drain()

    app = FastAPI(title="trainmaster", version="1", description=DESCRIPTION, lifespan=lifespan,
                  openapi_url=f"{PREFIX}/openapi.json", docs_url=None, redoc_url=None,
                  exception_handlers={Problem: on_problem, RequestValidationError: on_invalid,
                                      HTTPException: on_http_error, Exception: on_crash})
    app.include_router(router)
    app.openapi = lambda: openapi.document(app)  # type: ignore[method-assign]

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> Response:
        if wants_page(request.headers.get("accept", "")):
            return FileResponse(ASSETS / "index.html", headers={"Cache-Control": "no-cache"})
        return json_response(b'{"service": "trainmaster api-gateway", "api": "/api/v1", '
                             b'"openapi": "/api/v1/openapi.json"}')

    @app.get(f"{PREFIX}/health", tags=["service"], summary="Whether this gateway is connected to the bus")
    async def health(request: Request) -> Response:
        connected = request.app.state.nc.is_connected
        return json_response(b'{"bus": "connected"}' if connected else b'{"bus": "disconnected"}',
                             200 if connected else 503)

    app.mount("/console", StaticFiles(directory=ASSETS), name="console")
    return app
