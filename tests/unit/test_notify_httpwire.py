"""The webhook POST's bytes and the reading of the answer (services.notifier.httpwire)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.httpwire import (
    ProtocolError,
    ResponseReader,
    encode_headers,
    encode_post,
    endpoint,
    parse_head,
)


def test_endpoint_host_header_and_target() -> None:
    ep = endpoint(urlsplit("https://hooks.example.com/in/tm?team=ml#frag"))
    assert (ep.scheme, ep.host, ep.port, ep.tls) == ("https", "hooks.example.com", 443, True)
    assert ep.host_header == "hooks.example.com" and ep.target == "/in/tm?team=ml"
    ep = endpoint(urlsplit("http://[2001:db8::1]:8080"))
    assert (ep.host, ep.port, ep.host_header, ep.target) == ("2001:db8::1", 8080, "[2001:db8::1]:8080", "/")
    assert endpoint(urlsplit("http://h/a b/%41é")).target == "/a%20b/%41%C3%A9"


def test_post_bytes() -> None:
    ep = endpoint(urlsplit("http://h:81/hook"))
    request = encode_post(ep, encode_headers({"user-agent": "ua"}), {"webhook-id": "msg_1"}, b'{"a":1}')
    assert request == (b"POST /hook HTTP/1.1\r\nhost: h:81\r\nuser-agent: ua\r\nwebhook-id: msg_1\r\n"
                       b"content-length: 7\r\n\r\n{\"a\":1}")


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\rb"])
def test_a_line_break_in_a_header_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        encode_headers({"webhook-id": value})


def test_parse_head() -> None:
    head = parse_head(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: Close")
    assert (head.status, head.http11, head.content_length, head.chunked, head.close) == (204, True, 0, False, True)
    assert parse_head(b"HTTP/1.0 200").http11 is False
    assert parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked").chunked


@pytest.mark.parametrize("head", [b"SMTP 200 OK", b"HTTP/1.1 20 OK", b"HTTP/2 200", b"HTTP/1.1 200 OK\r\nno colon",
                                  b"HTTP/1.1 200 OK\r\ncontent-length: -1",
                                  b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2"])
def test_malformed_heads(head: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_head(head)


def read(*chunks: bytes, max_body: int = 100) -> ResponseReader:
    reader = ResponseReader(max_body)
    for chunk in chunks:
        reader.feed(chunk)
    return reader


def test_a_framed_body_is_read_and_the_connection_kept() -> None:
    reader = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"lo")
    assert reader.done and reader.reusable and reader.status == 200
    reader = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
    assert not reader.done


def test_informational_answers_are_skipped() -> None:
    reader = read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                  b"HTTP/1.1 410 Gone\r\ncontent-length: 0\r\n\r\n")
    assert reader.done and reader.status == 410 and reader.reusable


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello",  # chunked: not drained
    b"HTTP/1.1 200 OK\r\n\r\nuntil close",  # unframed
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",  # larger than max_body
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK",  # bytes after the response
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc",
])
def test_the_status_is_known_but_the_connection_is_not_reused(response: bytes) -> None:
    reader = read(response)
    assert reader.done and reader.status in (200, 204) and not reader.reusable


def test_a_protocol_switch_and_an_endless_head_are_errors() -> None:
    with pytest.raises(ProtocolError):
        read(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    with pytest.raises(ProtocolError):
        read(b"HTTP/1.1 200 OK\r\n" + b"x-pad: 1\r\n" * 10_000)


@given(split=st.lists(st.integers(min_value=1, max_value=80), max_size=10))
def test_any_split_of_the_bytes_reads_the_same(split: list[int]) -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 11\r\n\r\nhello world"
    chunks, rest = [], response
    for n in split:
        chunks.append(rest[:n])
        rest = rest[n:]
    chunks.append(rest)
    reader = read(*[c for c in chunks if c])
    assert reader.done and reader.reusable and reader.status == 202
