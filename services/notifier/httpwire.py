"""Pure core: the bytes of one webhook POST (HTTP/1.1) and what comes back.

The sender needs little of HTTP: one POST with a small body, then the status code, and the
connection kept for the next POST when that is safe.  ``encode_post`` builds the whole request
as one buffer (one write, one syscall); ``ResponseReader`` is fed what the socket delivers and
says when the response is complete and whether the connection may carry another request.
A response body is read and dropped up to ``max_body`` bytes (so the connection can be reused);
a larger, chunked or unframed body ends the reading at the head and the connection is closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, quote

# what may stay as it is in a request target (RFC 3986 pchar, '/', '?', and existing escapes)
_TARGET_SAFE = "/%:@!$&'()*+,;=-._~?"
_HEAD_END = b"\r\n\r\n"
MAX_HEAD = 64 * 1024  # a response head larger than this is not a webhook receiver's answer


class ProtocolError(Exception):
    """The peer's answer is not HTTP/1.x as this client reads it."""


@dataclass(frozen=True)
class Endpoint:
    """Where a URL's requests go: the pool key, the address to connect to, and the request line's
    target and ``Host`` header."""

    scheme: str
    host: str  # as connected to: a name or an IP literal without brackets
    port: int
    host_header: str
    target: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def endpoint(parts: SplitResult) -> Endpoint:
    """From a checked URL (``guard.check_url_static``): http or https, a host, no credentials."""
    host = parts.hostname or ""
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return Endpoint(parts.scheme, host, port, host_header, target)


def encode_headers(headers: dict[str, str]) -> bytes:
    """Header lines (each ending in CRLF); a CR or LF in a name or value is refused (no injection)."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise ValueError("a header holds a line break")
    return text.encode("latin-1")


def encode_post(ep: Endpoint, fixed_headers: bytes, headers: dict[str, str], body: bytes) -> bytes:
    """The whole request: request line, ``Host``, the client's fixed headers (already encoded),
    the attempt's headers, ``content-length``, body."""
    return b"".join((
        f"POST {ep.target} HTTP/1.1\r\nhost: {ep.host_header}\r\n".encode("latin-1"),
        fixed_headers,
        encode_headers(headers),
        b"content-length: %d\r\n\r\n" % len(body),
        body,
    ))


@dataclass(frozen=True)
class ResponseHead:
    status: int
    http11: bool
    content_length: int | None
    chunked: bool
    close: bool  # ``connection: close``


def parse_head(head: bytes) -> ResponseHead:
    """A response head without its final empty line."""
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit() \
            or len(status_line[1]) != 3:
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(f"malformed header line: {line[:80]!r}")
        name = name.strip().lower()
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ProtocolError(f"bad content-length: {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = chunked or b"chunked" in value.lower()
        elif name == b"connection":
            close = close or b"close" in value.lower()
    return ResponseHead(int(status_line[1]), status_line[0] == b"HTTP/1.1", length, chunked, close)


class ResponseReader:
    """Fed the bytes of one response (informational 1xx answers skipped); ``done`` once the
    status is known and the body read or given up on; ``reusable`` when the connection may
    carry the next request."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.buffer = bytearray()
        self.head: ResponseHead | None = None
        self.body_left = 0
        self.done = False
        self.reusable = False

    @property
    def status(self) -> int:
        assert self.head is not None
        return self.head.status

    def feed(self, data: bytes) -> bool:
        """Take more bytes; True once the response is complete (bytes after it: not reusable)."""
        if self.done:
            self.reusable = False  # the peer sent something nobody asked for
            return True
        if self.head is None:
            self.buffer += data
            while self.head is None:
                end = self.buffer.find(_HEAD_END)
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        raise ProtocolError("response head too large")
                    return False
                head = parse_head(bytes(self.buffer[:end]))
                del self.buffer[:end + len(_HEAD_END)]
                if 100 <= head.status < 200:
                    if head.status == 101:
                        raise ProtocolError("unexpected protocol switch")
                    continue  # 100 Continue, 103 Early Hints: the real answer follows
                self._start(head)
            if self.done:
                return True
            data, self.buffer = bytes(self.buffer), bytearray()
        self.body_left -= len(data)
        if self.body_left <= 0:
            self.done = True
            self.reusable = self.reusable and self.body_left == 0
        return self.done

    def _start(self, head: ResponseHead) -> None:
        self.head = head
        keep = head.http11 and not head.close
        if head.status in (204, 304):
            self.done, self.reusable = True, keep and not self.buffer
        elif head.chunked or head.content_length is None or head.content_length > self.max_body:
            self.done, self.reusable = True, False  # the status is all we need: close, do not drain
        else:
            self.body_left = head.content_length
            self.reusable = keep
            if self.body_left == 0:
                self.done = True
                self.reusable = keep and not self.buffer
