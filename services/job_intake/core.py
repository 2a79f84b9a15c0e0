"""Pure core of job-intake: decoding, normalising, naming, versioning, listing.  No I/O."""

from __future__ import annotations

import hashlib
import posixpath
import secrets
from collections.abc import Iterable

import msgspec

# decode_as and RequestError live in trainmaster.decoding (the scheduler and the notifier decode
# requests too); job-intake's modules and tests import them from here
from trainmaster.decoding import RequestError, decode_as
from trainmaster.locations import local_path, locate
from trainmaster.messages import (
    Algorithm,
    DataSource,
    ErrorBody,
    JobRequest,
    JobSummary,
    ListRequest,
    Violation,
)
from trainmaster.names import NAME_RE, TOKEN_RE


def _local(path: str | None) -> str | None:
    return None if path is None else local_path(path.strip())


def _boot_file(code_dir: str | None, boot_file: str | None) -> str | None:
    """A boot file may be given relative to the code directory; store it as a full path (the
    validator then checks it stays inside the code directory)."""
    boot = _local(boot_file)
    if boot and code_dir and locate(boot).kind == "relative" and locate(code_dir).kind == "local":
        return posixpath.join(code_dir, boot)
    if boot and code_dir and locate(boot).kind == "relative" and code_dir.lower().startswith("s3://"):
        return code_dir.rstrip("/") + "/" + boot  # object storage (R2): the validator checks it stays inside
    return boot


def _param_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def normalise(spec: JobRequest) -> JobRequest:
    """Trim names, turn ``file://`` URLs into paths and parameter values into strings, so that
    every later service sees one spelling of the same request."""
    algo = spec.algorithm
    return msgspec.structs.replace(
        spec,
        name=spec.name.strip() if spec.name else spec.name,
        description=spec.description.strip(),
        data=[DataSource(path=_local(d.path), dataset=d.dataset, version=d.version) for d in spec.data],
        algorithm=Algorithm(
            source=algo.source,
            engine=algo.engine.strip().lower() if algo.engine else algo.engine,
            engine_version=algo.engine_version,
            code_dir=_local(algo.code_dir),
            boot_file=_boot_file(_local(algo.code_dir), algo.boot_file),
            preset=algo.preset,
            image=algo.image,
            command=algo.command,
        ),
        parameters={k.strip(): _param_value(v) for k, v in spec.parameters.items()},
        output_path=_local(spec.output_path),
        log_path=_local(spec.log_path),
    )


def check_name(name: str | None) -> None:
    """The name is needed to assign a version, so intake checks it before storing anything."""
    if not name:
        raise RequestError(ErrorBody("invalid_request", "name: the job needs a name",
                                     [Violation("name", "required", "give the job a name, e.g. \"iris-sklearn\"")]))
    if not NAME_RE.match(name):
        raise RequestError(ErrorBody(
            "invalid_request", f"name: {name[:80]!r} is not a valid job name",
            [Violation("name", "invalid_name", "use 1-64 letters, digits, '-' or '_'")],
        ))


def format_version(n: int) -> str:
    return f"V{n:03d}"


def new_job_id(now: float) -> str:
    """Sortable by creation time (millisecond prefix), unique by a random suffix."""
    return f"job-{int(now * 1000):012x}{secrets.token_hex(4)}"


def request_key(request_id: str) -> str:
    """KV keys allow a narrow alphabet; request ids are free text."""
    return hashlib.sha256(request_id.encode()).hexdigest()[:40]




def request_token(request_id: str) -> str:
    """The subject token of ``tm.events.request.<token>``: the request id itself when it is a
    plain token (letters, digits, ``-``, ``_``; at most 128), else ``request_key(request_id)``."""
    return request_id if TOKEN_RE.match(request_id) else request_key(request_id)


def select(jobs: Iterable[JobSummary], query: ListRequest) -> tuple[list[JobSummary], int]:
    """Filter by status and name, newest first, then one page."""
    matching = [
        j for j in jobs
        if (query.status is None or j.status == query.status) and (query.name is None or j.name == query.name)
    ]
    matching.sort(key=lambda j: (j.created_at, j.id), reverse=True)
    return matching[query.offset : query.offset + query.limit], len(matching)


# ------------------------------------------------------------------------------ overrides
def set_path(tree: dict, path: str, value: object) -> None:
    """``set_path(spec, "parameters.max_iter", 300)``: set a nested key, creating mappings on the way.
    ``data.0.path`` indexes a list.  Raises ValueError for a path that cannot be followed."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ValueError(f"override {path!r}: use a dotted path such as parameters.max_iter")
    node: object = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"override {path!r}: {'.'.join(parts[:i]) or '$'} has no item {part}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if child is None:
                    child = {}
                    node[part] = child
                elif not isinstance(child, dict | list):
                    raise ValueError(f"override {path!r}: {'.'.join(parts[:i + 1])} is not an object")
                node = child
        else:
            raise ValueError(f"override {path!r}: {'.'.join(parts[:i])} is not an object")


def with_overrides(spec: JobRequest, overrides: dict[str, object], max_bytes: int) -> JobRequest:
    """``spec`` with ``overrides`` applied, decoded again: a bad override is a RequestError naming
    the field, exactly as if the whole request had been sent that way."""
    tree = msgspec.to_builtins(spec)
    for path, value in overrides.items():
        try:
            set_path(tree, path.strip(), value)
        except ValueError as exc:
            raise RequestError(ErrorBody("invalid_request", str(exc),
                                         [Violation(f"overrides.{path}", "invalid_override", str(exc))])) from None
    return decode_as(msgspec.json.encode(tree), JobRequest, max_bytes)


def without_save_as(spec: JobRequest) -> JobRequest:
    return msgspec.structs.replace(spec, save_as=None) if spec.save_as is not None else spec
