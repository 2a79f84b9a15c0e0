"""A job's events and log lines as Server-Sent Events (``text/event-stream``).  Pure: each
message of the bus's streamed reply (``tm.jobs.events``, ``tm.jobs.logs``) becomes one SSE event
whose ``id`` is its stream sequence (``Tm-Seq``), so a client that reconnects with
``Last-Event-ID`` goes on after the last one it got."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from trainmaster import jobfeed

MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keepalive\n\n"  # a comment: keeps proxies and the client's read timeout from closing a quiet follow


def frame(event: str, data: bytes, event_id: str | None = None) -> bytes:
    """One SSE event; ``data`` is one line of JSON (a line break would start another field)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


def of_event(data: bytes, headers: Mapping[str, str]) -> bytes:
    """A job event: ``event: event``, the CloudEvent as it is stored."""
    return frame("event", data, headers[jobfeed.SEQ])


def of_line(data: bytes, headers: Mapping[str, str]) -> bytes:
    """A log line: ``event: line``, ``{"node", "stream", "text"}`` (``line``: its number where the
    agent gave one)."""
    line: dict[str, object] = {"node": headers.get(jobfeed.NODE, ""), "stream": headers.get(jobfeed.LOG_STREAM, ""),
                               "text": data.decode("utf-8", "replace")}
    if (number := headers.get(jobfeed.LOG_LINE, "")).isdigit():
        line["line"] = int(number)
    return frame("line", msgspec.json.encode(line), headers[jobfeed.SEQ])


def end() -> bytes:
    """The last event: everything asked for was sent (a follow: the job has ended)."""
    return frame("end", b'{"done": true}')


def error(problem: bytes) -> bytes:
    """A refusal after the stream began (the token revoked, the role taken away): its problem."""
    return frame("error", problem)
