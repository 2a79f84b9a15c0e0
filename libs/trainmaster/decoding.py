"""Decoding a request body into its message type, or an error that names the field, the problem
and the fix.  Every request/reply verb and ``tm.jobs.submit`` decode through ``decode_as``, so
every kind of bad body gets one shape of answer at once.  Pure: no I/O."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from trainmaster.limits import (
    MAX_FIELD_CHARS,
    MAX_JSON_DEPTH,
    MAX_MESSAGE_CHARS,
    bounded_error,
    clip,
    json_depth_violation,
)
from trainmaster.messages import ErrorBody, Violation
from trainmaster.names import PLAIN_KEY_RE

T = TypeVar("T")

_FIELD_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


class RequestError(Exception):
    def __init__(self, body: ErrorBody) -> None:
        # bounded here, so that no caller can echo a body over the payload limit (a 200 KB unknown
        # key is in the message, the field and the detail)
        body = bounded_error(body)
        super().__init__(body.message)
        self.body = body


class EmptyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of the list verbs that take no arguments: ``{}`` (or nothing)."""


def _field_of(path: str) -> str:
    """msgspec's ``$.data[0].path`` -> ``data[0].path``."""
    return path.lstrip(".") or "$"


def decode_as(body: bytes, type_: type[T], max_bytes: int) -> T:
    """Decode a JSON request body, or raise RequestError naming the field and the problem."""
    if len(body) > max_bytes:
        raise RequestError(ErrorBody(
            "request_too_large",
            f"the request is {len(body)} bytes; the limit is {max_bytes} bytes",
            [Violation("$", "too_large", f"send at most {max_bytes} bytes (TM_MAX_REQUEST_BYTES)")],
        ))
    if not body.strip():
        raise RequestError(ErrorBody("invalid_json", "the request body is empty",
                                     [Violation("$", "empty", "send a JSON object")]))
    # before decoding: an untyped part (overrides, a mapping's key search) would recurse once per
    # level.  A body that is no object is left to the typed decode, which stops at its first token
    # and says what a body must be.
    if body.lstrip()[:1] == b"{" and (deep := json_depth_violation(body, MAX_JSON_DEPTH)) is not None:
        raise RequestError(ErrorBody("invalid_request", f"{deep.field}: {deep.message}", [deep]))
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise RequestError(_invalid(body, type_, str(exc))) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # UnicodeDecodeError: bytes that are not UTF-8 inside a JSON string
        raise RequestError(ErrorBody(
            "invalid_json", f"the request is not valid JSON: {exc}",
            [Violation("$", "invalid_json", f"{exc}; send a UTF-8 JSON object")],
        )) from None
    except RecursionError:
        # not reached past the depth check; kept so that no body can ever become an internal error
        raise RequestError(ErrorBody("invalid_request", "$: nested too deeply", [Violation(
            "$", "too_deep", f"arrays or objects are nested more than {MAX_JSON_DEPTH} levels deep; send flat values",
        )])) from None


def _invalid(body: bytes, type_: type, text: str) -> ErrorBody:
    m = _FIELD_AT.search(text)
    field = _field_of(m.group("path")) if m else "$"
    if "[...]" in field:  # msgspec does not say which key of a mapping holds the bad value
        field = _name_mapping_key(body, type_, field)
    message = text[: m.start()] if m else text
    code = "unknown_field" if "unknown field" in message else (
        "missing_field" if "missing required field" in message else "invalid_type")
    # greedy: a key may itself hold backticks; the message ends with the closing one
    named = re.search(r"(?:unknown|missing required) field `(.*)`$", message)
    if named:  # the field is the one named in the message, inside the object at the path
        field = _child_field(field, named.group(1))
    if code == "unknown_field":
        message += "; remove it or check its spelling"
    elif field == "$" and code == "invalid_type":
        # `[]`, `"x"`, `42`, `null`, `true`: valid JSON, but every request is an object
        message += "; send a JSON object ({...}) as the body"
    # clipped before the summary is made of them, so that the summary still names the field
    field, message = clip(field, MAX_FIELD_CHARS), clip(message, MAX_MESSAGE_CHARS)
    return ErrorBody("invalid_request", f"{field}: {message}", [Violation(field, code, message)])


def _child_field(parent: str, key: str) -> str:
    """``parent.key``, or ``parent["key"]`` when the key is no plain name (empty, dots, quotes)."""
    if PLAIN_KEY_RE.match(key):
        return key if parent == "$" else f"{parent}.{key}"
    quoted = f"[{msgspec.json.encode(key).decode()}]"
    return quoted if parent == "$" else f"{parent}{quoted}"


_SEGMENT_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _name_mapping_key(body: bytes, type_: type, field: str) -> str:
    """``parameters[...]`` -> ``parameters.lr``: find the key of the mapping at the first ``[...]``
    whose value reproduces the error.  Falls back to ``field`` when it cannot tell.

    A bad value makes the error alone, whatever the other keys hold, so halving the mapping finds
    the first bad key in log2(n) conversions of the request: one conversion per key would take
    minutes for a request with tens of thousands of parameters."""
    prefix, _, rest = field.partition("[...]")
    try:
        whole = msgspec.json.decode(body)
        segments = [name if name else int(index) for name, index in _SEGMENT_RE.findall("." + prefix)]
        parent = whole
        for segment in segments[:-1]:
            parent = parent[segment]
        items = list(parent[segments[-1]].items())

        def fails(part: list) -> bool:
            parent[segments[-1]] = dict(part)
            try:
                msgspec.convert(whole, type_)
            except msgspec.ValidationError as exc:
                m = _FIELD_AT.search(str(exc))
                return bool(m) and _field_of(m.group("path")) == field
            return False

        lo, hi = 0, len(items)
        if not fails(items):
            return field
        while hi - lo > 1:  # items[lo:hi] holds a bad value
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fails(items[lo:mid]) else (mid, hi)
        key = items[lo][0]
        token = f".{key}" if PLAIN_KEY_RE.match(key) else f"[{msgspec.json.encode(key).decode()}]"
        return f"{prefix}{token}{rest}"
    except (ValueError, LookupError, TypeError, AttributeError, RecursionError):
        return field


def decode_empty(body: bytes, max_bytes: int) -> EmptyRequest:
    """The body of a verb that takes no arguments: nothing or ``{}``; anything else is refused
    (``[]``, ``42``, unknown fields), as by every other verb."""
    return decode_as(body if body.strip() else b"{}", EmptyRequest, max_bytes)
