"""Bounds on what the services read and write, so that bad input is answered at once.

A request nested thousands of levels deep would make an untyped JSON decode raise RecursionError
(an ``internal`` error, or a redelivery loop on ``tm.jobs.submit``), so requests are refused
past ``MAX_JSON_DEPTH`` before they are decoded.  An error's details and a job's violations are
echoed into replies, KV records and events, all of which must stay under the server's payload
limit (1 MiB by default): a list longer than ``MAX_DETAILS`` keeps its first entries and ends
with one ``more_violations`` detail saying how many were left out, and every text is clipped.
Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import msgspec

from trainmaster.messages import ErrorBody, Violation
from trainmaster.names import PLAIN_KEY_RE

# a job request needs about six levels (request > data > source, overrides > spec > ...)
MAX_JSON_DEPTH = 64
# 100 details of at most ~1.3 KB each: ~130 KB, so a record holding a 256 KiB spec, its
# violations and its failure reason, or an event or reply repeating them, stays under 1 MiB
MAX_DETAILS = 100
MAX_FIELD_CHARS = 200
MAX_MESSAGE_CHARS = 1000
MAX_REASON_CHARS = 4000
MORE_VIOLATIONS = "more_violations"


def clip(text: str, limit: int) -> str:
    """``text``, or its start and a note of its full length, in at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    marker = f"... [{len(text)} characters in all]"
    return text[: max(limit - len(marker), 0)] + marker


def bounded(violation: Violation) -> Violation:
    field = clip(violation.field, MAX_FIELD_CHARS)
    message = clip(violation.message, MAX_MESSAGE_CHARS)
    code = clip(violation.code, MAX_FIELD_CHARS)
    if (field, code, message) == (violation.field, violation.code, violation.message):
        return violation
    return Violation(field, code, message)


def _top_field(field: str) -> str:
    """``parameters.lr`` -> ``parameters``; ``data[3].path`` -> ``data``."""
    return re.split(r"[.\[]", field, maxsplit=1)[0] or "$"


def cap_violations(violations: Sequence[Violation], max_count: int = MAX_DETAILS,
                   noun: str = "violations") -> list[Violation]:
    """At most ``max_count`` violations, each clipped; past that, the first ``max_count - 1`` and a
    last ``more_violations`` detail that counts the rest by code.  Applying it twice changes nothing."""
    if len(violations) <= max_count:
        return [bounded(v) for v in violations]
    kept = [bounded(v) for v in violations[: max_count - 1]]
    rest = violations[max_count - 1:]
    by_code = Counter(v.code for v in rest).most_common()
    codes = ", ".join(f"{n} {code}" for code, n in by_code[:5]) + (", ..." if len(by_code) > 5 else "")
    tops = {_top_field(v.field) for v in rest}
    field = tops.pop() if len(tops) == 1 else "$"
    message = (f"{len(rest)} more {noun} left out ({codes}); {len(violations)} in all: fix the ones "
               f"listed and send the request again (tm.jobs.plan checks without creating a job)")
    return [*kept, Violation(field, MORE_VIOLATIONS, clip(message, MAX_MESSAGE_CHARS))]


def bounded_error(body: ErrorBody) -> ErrorBody:
    """``body`` with its message clipped and its details capped."""
    message = clip(body.message, MAX_REASON_CHARS)
    details = cap_violations(body.details)
    if message == body.message and details == list(body.details):
        return body
    return ErrorBody(body.code, message, details)


# a JSON string (escapes included), or one structural character: what the depth scan looks at
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:,]')


def json_depth_violation(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Violation | None:
    """A ``too_deep`` violation when arrays/objects in ``body`` nest more than ``max_depth`` levels,
    naming where (up to four path segments); else None.  Does not check that ``body`` is JSON."""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return None  # cannot be too deep: the common case costs two C-speed counts
    path: list[str | int] = []  # per open container: the key or index of the value being read
    kinds: list[bytes] = []
    last_string = b'""'
    for match in _TOKEN.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            if len(kinds) >= max_depth:
                field = _render(path[:4])
                return Violation(field, "too_deep", (
                    f"nested more than {max_depth} levels deep (arrays or objects inside each "
                    f"other); no field of a request needs that: send flat values (a run parameter is a "
                    f"string, number or boolean)"))
            kinds.append(token)
            path.append(0 if token == b"[" else "")
        elif token in (b"]", b"}"):
            if kinds:
                kinds.pop()
                path.pop()
        elif token == b":":
            if kinds and kinds[-1] == b"{":
                path[-1] = last_string[1:-1].decode("utf-8", "replace")
        elif token == b",":
            if kinds and kinds[-1] == b"[":
                path[-1] = int(path[-1]) + 1
        else:
            last_string = token
    return None


def _render(path: Sequence[str | int]) -> str:
    """``["parameters", "lr", 0]`` -> ``parameters.lr[0]``; ``[]`` -> ``$``."""
    out = ""
    for segment in path:
        if isinstance(segment, int):
            out += f"[{segment}]"
        elif PLAIN_KEY_RE.match(segment):
            out += f".{segment}" if out else segment
        else:
            out += f"[{msgspec.json.encode(clip(segment, 40)).decode()}]"
    return clip(out if out and not out.startswith("[") else f"${out}", MAX_FIELD_CHARS)
