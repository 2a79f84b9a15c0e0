"""Shell: a small HTTP/1.1 client for webhook POSTs with pooled keep-alive connections.

Why not aiohttp's client: a webhook attempt is one small POST whose status is all that matters,
and aiohttp's general-purpose request path (URL objects, payload registry, header multidicts,
stream readers, tracing hooks) cost ~190 us of CPU per request here, most of the notifier's
time per delivery; writing the request as one buffer and reading the answer in the protocol
callback costs ~35 us (docs/benchmarks.md, "Notifications").

- One pool of idle connections per (scheme, host, port); a connection goes back only when the
  response was read completely and the server keeps it open; one idle longer than
  ``keepalive_s`` is closed.  At most ``max_idle`` idle connections in all.
- A name is resolved, at each new connection, through the resolver given (the address guard's
  ``GuardedResolver`` unless private addresses are allowed), and the address it returned is
  the address connected to.  IP literals are checked by the caller (``check_url_static``).
- TLS for https with the system's verified default context (SNI and host name check).
- A request sent on a reused connection that the server had closed meanwhile (it answered
  nothing) is sent once more on a new connection; everything else that fails raises.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque

from aiohttp.abc import AbstractResolver

from services.notifier.httpwire import Endpoint, ProtocolError, ResponseReader


class ServerDisconnected(ConnectionError):
    pass


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader: ResponseReader | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.received = False  # any byte of the current response
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        reader, waiter = self.reader, self.waiter
        if reader is None or waiter is None or waiter.done():
            self.close()  # unasked-for bytes: this connection cannot be trusted for the next request
            return
        try:
            if reader.feed(data):
                waiter.set_result(None)
        except ProtocolError as exc:
            waiter.set_exception(exc)

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ServerDisconnected(f"server closed the connection: {exc or 'EOF'}"))

    async def exchange(self, request: bytes, max_body: int) -> ResponseReader:
        assert self.transport is not None
        self.reader = reader = ResponseReader(max_body)
        self.waiter = asyncio.get_running_loop().create_future()
        self.received = False
        self.transport.write(request)
        try:
            await self.waiter
        finally:
            self.waiter = None
        return reader

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Client:
    def __init__(self, resolver: AbstractResolver, max_idle: int, keepalive_s: float = 30.0,
                 max_body: int = 64 * 1024) -> None:
        self.resolver = resolver
        self.max_idle = max_idle
        self.keepalive_s = keepalive_s
        self.max_body = max_body
        self.tls = ssl.create_default_context()
        self.idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self.idle_count = 0

    async def post(self, ep: Endpoint, request: bytes) -> int:
        """Send ``request`` (``httpwire.encode_post``) to ``ep``; the response's status code.
        Raises on connection errors and malformed answers; the caller bounds the time."""
        conn = self._take(ep)
        if conn is not None:
            try:
                return await self._exchange(ep, conn, request)
            except ServerDisconnected:
                if conn.received:
                    raise
                # closed while idle (the server's keep-alive ran out): nothing was answered
        return await self._exchange(ep, await self._connect(ep), request)

    async def _exchange(self, ep: Endpoint, conn: _Connection, request: bytes) -> int:
        try:
            reader = await conn.exchange(request, self.max_body)
        except BaseException:
            conn.close()  # cancelled (timeout) or failed: the stream's state is unknown
            raise
        if reader.reusable and not conn.closed:
            self._give_back(ep, conn)
        else:
            conn.close()
        return reader.status

    def _take(self, ep: Endpoint) -> _Connection | None:
        pool = self.idle.get((ep.scheme, ep.host, ep.port))
        now = time.monotonic()
        while pool:
            conn = pool.pop()  # the most recently used: the least likely to have timed out
            self.idle_count -= 1
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return None

    def _give_back(self, ep: Endpoint, conn: _Connection) -> None:
        conn.reader = None
        conn.idle_since = time.monotonic()
        pool = self.idle.setdefault((ep.scheme, ep.host, ep.port), deque())
        pool.append(conn)
        self.idle_count += 1
        while self.idle_count > self.max_idle:
            oldest = max(self.idle.values(), key=len)
            oldest.popleft().close()
            self.idle_count -= 1

    async def _connect(self, ep: Endpoint) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = dict(ssl=self.tls, server_hostname=ep.host) if ep.tls else {}
        if _is_ip(ep.host):
            addresses = [ep.host]
        else:
            addresses = [r["host"] for r in await self.resolver.resolve(ep.host, ep.port, socket.AF_UNSPEC)]
        last: Exception = OSError(f"{ep.host} resolves to no address")
        for address in addresses:
            try:
                _, conn = await loop.create_connection(_Connection, address, ep.port, **tls)  # type: ignore[arg-type]
            except OSError as exc:
                last = exc
                continue
            return conn  # asyncio sets TCP_NODELAY: the one write goes out at once
        raise last

    async def close(self) -> None:
        for pool in self.idle.values():
            for conn in pool:
                conn.close()
        self.idle.clear()
        self.idle_count = 0
        await self.resolver.close()


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
