"""Errors over HTTP: RFC 9457 problem details (``application/problem+json``) that carry the bus's
``[{field, code, message}]`` list as ``errors``.  Pure: an error reply of a service, or a fault the
gateway finds itself (a missing token, a body too large, a bad query parameter), becomes a
``Problem``; app.py renders it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

MEDIA_TYPE = "application/problem+json"

# each error code of the contract (docs/contract.md, "Errors") and the HTTP status that says it
STATUS_OF_CODE: dict[str, int] = {
    "invalid_json": 400,
    "invalid_request": 422,
    "validation_failed": 422,
    "request_too_large": 413,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "unavailable": 503,
    "timeout": 504,
    "internal": 500,
}
TITLES: dict[str, str] = {
    "invalid_json": "The body is not JSON",
    "invalid_request": "The request is not valid",
    "validation_failed": "The job is not valid",
    "request_too_large": "The body is too large",
    "unauthorized": "Not authenticated",
    "forbidden": "Not allowed",
    "not_found": "Not found",
    "conflict": "Conflict",
    "unavailable": "Service unavailable",
    "timeout": "The service did not answer in time",
    "internal": "Internal error",
}
ERROR_PREFIX = b'{"error":'  # how every error reply of the bus begins (trainmaster.bus.error_reply)


@dataclass
class Problem(Exception):
    """One problem: ``code`` (the bus's), ``detail`` (what happened and what would help),
    ``errors`` (the fields at fault), ``extra`` (more members, e.g. the failed ``job``)."""

    code: str
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None  # None: the code's
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)
        if self.status is None:
            self.status = STATUS_OF_CODE.get(self.code, 400)
        if self.code == "unauthorized" and "WWW-Authenticate" not in self.headers:
            self.headers["WWW-Authenticate"] = 'Bearer realm="trainmaster", error="invalid_token"'

    def body(self) -> dict[str, Any]:
        return {"type": f"urn:trainmaster:problem:{self.code}", "title": TITLES.get(self.code, self.code),
                "status": self.status, "detail": self.detail, "code": self.code, "errors": self.errors,
                **self.extra}

    def encoded(self) -> bytes:
        return msgspec.json.encode(self.body())


def of_reply(data: bytes) -> Problem | None:
    """The problem an error reply of a service says; None for any other reply."""
    if not data.startswith(ERROR_PREFIX):
        return None
    try:
        reply = msgspec.json.decode(data)
        error = reply["error"]
        code, message = str(error["code"]), str(error["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return None
    errors = [dict(d) for d in error.get("details") or [] if isinstance(d, Mapping)]
    extra = {"job": reply["job"]} if isinstance(reply.get("job"), dict) else {}
    return Problem(code, message, errors, extra=extra)


def field_problem(name: str, code: str, message: str) -> Problem:
    """A fault of one field of the request (a path or query parameter, a header)."""
    return Problem("invalid_request", f"{name}: {message}", [{"field": name, "code": code, "message": message}])


def missing_token(why: str) -> Problem:
    return Problem("unauthorized", why, [{"field": "Authorization", "code": "unauthorized", "message": why}],
                   headers={"WWW-Authenticate": 'Bearer realm="trainmaster"'})


def of_validation(errors: Sequence[Mapping[str, Any]]) -> Problem:
    """FastAPI's validation errors of path, query and header parameters, as a problem naming each."""
    out = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("path", "query", "header", "body")]
        name = ".".join(loc) or "$"
        out.append({"field": name, "code": str(error.get("type", "invalid")), "message": str(error.get("msg", ""))})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in out) or "the request is not valid"
    return Problem("invalid_request", detail, out)
