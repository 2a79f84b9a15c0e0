"""The notifier's HTTP/1.1 client against a real aiohttp server on 127.0.0.1: keep-alive reuse,
a connection the server closed while idle, answers whose body is not drained, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.resolver import DefaultResolver

from services.notifier.http1 import Http1Client
from services.notifier.httpwire import encode_headers, encode_post, endpoint
from services.notifier.retry import Verdict
from services.notifier.senders import WebhookSender
from trainmaster.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


class Server:
    def __init__(self) -> None:
        self.peers: list[tuple] = []  # the client's address of each request: one per connection
        self.bodies: list[bytes] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Server:
        app = web.Application()
        app.router.add_post("/ok", self.ok)
        app.router.add_post("/close", self.close)
        app.router.add_post("/chunked", self.chunked)
        app.router.add_post("/slow", self.slow)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def note(self, request: web.Request) -> None:
        self.bodies.append(await request.read())
        self.peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]

    async def ok(self, request: web.Request) -> web.Response:
        await self.note(request)
        return web.Response(status=202, text="accepted")

    async def close(self, request: web.Request) -> web.Response:
        await self.note(request)
        return web.Response(status=200, headers={"connection": "close"})

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        await self.note(request)
        resp = web.StreamResponse(status=201)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        await resp.write_eof()
        return resp

    async def slow(self, request: web.Request) -> web.Response:
        await self.note(request)
        await asyncio.sleep(2)
        return web.Response(status=200)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = await Server().start()
    try:
        yield s
    finally:
        assert s.runner is not None
        await s.runner.cleanup()


def post(url: str, body: bytes = b"{}") -> tuple:
    ep = endpoint(urlsplit(url))
    return ep, encode_post(ep, encode_headers({"user-agent": "t"}), {"content-type": "application/json"}, body)


async def test_a_connection_is_kept_and_reused(server: Server) -> None:
    client = Http1Client(DefaultResolver(), max_idle=8)
    try:
        for i in range(3):
            assert await client.post(*post(server.url("/ok"), b'{"n":%d}' % i)) == 202
        assert len(set(server.peers)) == 1 and server.bodies == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        assert client.idle_count == 1
    finally:
        await client.close()


async def test_connection_close_and_an_undrained_body_are_not_reused(server: Server) -> None:
    client = Http1Client(DefaultResolver(), max_idle=8)
    try:
        assert await client.post(*post(server.url("/close"))) == 200
        assert await client.post(*post(server.url("/chunked"))) == 201
        assert await client.post(*post(server.url("/ok"))) == 202
        assert len(set(server.peers)) == 3
    finally:
        await client.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced(server: Server) -> None:
    client = Http1Client(DefaultResolver(), max_idle=8)
    try:
        assert await client.post(*post(server.url("/ok"))) == 202
        [idle] = client.idle[("http", "127.0.0.1", server.port)]
        assert idle.transport is not None
        # gone, but the client learns it only once the request is written (as when the server's
        # keep-alive runs out just then): nothing was answered, so it is sent on a new connection
        idle.transport.abort()
        assert await client.post(*post(server.url("/ok"))) == 202
        assert len(server.bodies) == 2 and len(set(server.peers)) == 2
    finally:
        await client.close()


async def test_the_attempt_is_bounded_and_the_connection_dropped(server: Server) -> None:
    sender = await WebhookSender(Settings(webhook_allow_private=True, webhook_timeout_s=0.5)).start()
    try:
        secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        result = await sender.send(server.url("/slow"), secret, "msg_1", b"{}", 1)
        assert result.verdict is Verdict.RETRY and result.error == "timeout"
        assert sender.client is not None and sender.client.idle_count == 0
        result = await sender.send(server.url("/ok"), secret, "msg_2", b"{}", 1)
        assert result.verdict is Verdict.DELIVERED and result.status == 202
    finally:
        await sender.close()
