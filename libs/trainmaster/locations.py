"""How a location string reads: a local path, a relative path, a URL of another scheme (s3://),
or something unusable.  Intake, validator and agent share this one reading."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class Location:
    """How a raw location string reads.  ``path`` is the local filesystem path for ``local``,
    the scheme for ``remote``, and empty otherwise."""

    kind: Literal["local", "relative", "remote", "invalid"]
    path: str = ""


def locate(raw: str) -> Location:
    """Classify a location: an absolute local path (``/x`` or ``file:///x``), a relative path,
    a URL of another storage scheme (``s3://...``), or something unusable."""
    if "\x00" in raw:
        return Location("invalid")
    if raw[:5].lower() == "file:":
        rest = raw[5:]
        if rest.startswith("//"):
            host, slash, tail = rest[2:].partition("/")
            if host.lower() not in ("", "localhost") or not slash:
                return Location("invalid")
            return Location("local", "/" + tail)
        if rest.startswith("/"):
            return Location("local", rest)
        return Location("invalid")
    scheme = _SCHEME_RE.match(raw)
    if scheme:
        return Location("remote", scheme.group(1).lower())
    if raw.startswith("/"):
        return Location("local", raw)
    return Location("relative")


def local_path(raw: str) -> str:
    """The filesystem path of a local location (``file:///x`` -> ``/x``); other strings unchanged."""
    if raw[:1] == "/" and "\x00" not in raw:  # a plain absolute path, the common case: itself
        return raw
    loc = locate(raw)
    return loc.path if loc.kind == "local" else raw
