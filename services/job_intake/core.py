"""Pure core of job-intake: reading a request, normalising, naming, versioning, listing, and the
decisions behind each record it keeps (request claims, templates, dataset listings).  No I/O."""

from __future__ import annotations

import hashlib
import posixpath
import secrets
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from trainmaster.decoding import RequestError, decode_as
from trainmaster.delivery_policy import MSG_ID
from trainmaster.locations import local_path, locate
from trainmaster.messages import (
    Algorithm,
    Dataset,
    DatasetVersion,
    DatasetVersionInfo,
    DataSource,
    ErrorBody,
    JobRequest,
    JobSummary,
    ListRequest,
    Template,
    TemplateUpdate,
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


def read_job_request(body: bytes, max_bytes: int) -> JobRequest:
    """A job request as every verb that takes one reads it: decoded, normalised, its name checked."""
    spec = normalise(decode_as(body, JobRequest, max_bytes))
    check_name(spec.name)
    return spec


def read_planned_request(body: bytes, max_bytes: int) -> JobRequest:
    """A job request to plan: decoded and normalised, its name not checked here — the validator
    reports a missing or bad name with every other violation, so a form shows them all at once."""
    return normalise(decode_as(body, JobRequest, max_bytes))


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


def claim_key(request_id: str, claimant: str | None) -> str:
    """The request claim's key: a person's request ids are its own (another person naming the
    same id claims another key, so it never gets the job that id made for someone else); the
    cluster admin's keep the key they always had."""
    return request_key(request_id if claimant is None else f"{claimant}\n{request_id}")


def request_token(request_id: str) -> str:
    """The subject token of ``tm.events.request.<token>``: the request id itself when it is a
    plain token (letters, digits, ``-``, ``_``; at most 128), else ``request_key(request_id)``."""
    return request_id if TOKEN_RE.match(request_id) else request_key(request_id)


def latest_job(jobs: Iterable[JobSummary], name: str) -> str | None:
    """The id of the job with the highest version of ``name`` (the newer one of equal versions)."""
    named = [j for j in jobs if j.name == name]
    if not named:
        return None
    return max(named, key=lambda j: (int(j.version[1:]) if j.version[1:].isdigit() else 0, j.created_at)).id


def select(jobs: Iterable[JobSummary], query: ListRequest, owners: Mapping[str, str] | None = None,
           projects: frozenset[str] | None = None) -> tuple[list[JobSummary], int]:
    """Filter by status and name, and to the jobs whose account (``owners``: job id -> account) is
    one of ``projects`` (None: every job), newest first, then one page; the total counts the match."""
    matching = [
        j for j in jobs
        if (query.status is None or j.status == query.status) and (query.name is None or j.name == query.name)
        and (projects is None or (owners or {}).get(j.id) in projects)
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


# ------------------------------------------------------------------------------ request claims
class RequestClaim(msgspec.Struct):
    """Value of ``tm_requests[request_key(request id)]``: the job a request creates, and its
    version once taken, so that a redelivered or retried request finds the same job."""

    job_id: str
    version: str | None = None


def claim_request(current: RequestClaim | None, job_id: str) -> RequestClaim | None:
    """The first delivery of a request claims it for ``job_id``; a later one finds it claimed
    (None: keep the claim there is)."""
    return RequestClaim(job_id) if current is None else None


def claim_version(current: RequestClaim | None, claim: RequestClaim, version: str) -> RequestClaim | None:
    """``claim`` with ``version`` recorded, unless a concurrent delivery recorded one first (None:
    keep that one, so both deliveries create the same job)."""
    if current is not None and current.version is not None:
        return None
    return msgspec.structs.replace(current or claim, version=version)


def submission_request_id(headers: Mapping[str, str] | None, stream: str, sequence: int) -> str:
    """A submission's request id: the client's ``Nats-Msg-Id``; without one, the stream sequence
    still makes redeliveries idempotent."""
    return (headers or {}).get(MSG_ID) or f"{stream}-{sequence}"


def number_versions(names: Sequence[str], firsts: Mapping[str, int]) -> list[str]:
    """The version of each of a batch's new jobs, in order: the jobs named ``name`` get the
    numbers taken together from ``firsts[name]`` on, one after another (as many as there are)."""
    following = dict(firsts)
    versions = []
    for name in names:
        versions.append(format_version(following[name]))
        following[name] += 1
    return versions


# ------------------------------------------------------------------------------ templates
def saved_template(current: Template | None, name: str, description: str, spec: JobRequest,
                   source_job: str | None, now: float) -> Template:
    """Template ``name`` holding ``spec`` (without its own ``save_as``); one of that name is replaced."""
    spec = without_save_as(spec)
    if current is None:
        return Template(name=name, spec=spec, created_at=now, updated_at=now, description=description,
                        source_job=source_job)
    return msgspec.structs.replace(current, spec=spec, description=description, updated_at=now,
                                   source_job=source_job)


def updated_template(current: Template, change: TemplateUpdate, max_bytes: int, now: float) -> Template:
    """``current`` with the update's spec, overrides and description; a bad override is a RequestError."""
    spec = change.spec if change.spec is not None else current.spec
    spec = normalise(with_overrides(spec, change.overrides, max_bytes))
    return msgspec.structs.replace(
        current, spec=without_save_as(spec), updated_at=now,
        description=change.description if change.description is not None else current.description)


# ------------------------------------------------------------------------------ dataset versions
def next_dataset_version(dataset: Dataset) -> str:
    return format_version(max((int(v.version[1:]) for v in dataset.versions), default=0) + 1)


def with_listed_version(dataset: Dataset, version: DatasetVersion, now: float) -> Dataset | None:
    """``dataset`` listing ``version`` among its versions (in order); None when it lists it already."""
    if any(v.version == version.version for v in dataset.versions):
        return None
    info = DatasetVersionInfo(version=version.version, created_at=version.created_at, files=len(version.files),
                              bytes=version.total_bytes, description=version.description)
    versions = sorted([*dataset.versions, info], key=lambda v: int(v.version[1:]))
    return msgspec.structs.replace(dataset, versions=versions, updated_at=now)
