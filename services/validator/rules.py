"""The validator's pure core: ``check(spec, facts)`` returns every violation of a job request at once.

No I/O here.  What the rules know about the filesystem comes in ``facts``: one ``PathFact`` per
local path the spec mentions, keyed by the raw string as written in the spec (``facts.gather``
builds it).  Each violation carries a field path (``algorithm.boot_file``, ``data[1].path``,
``parameters.max_iter``), a stable snake_case code and a message saying what is wrong and how to
fix it.  The codes are part of the public contract: see README.md.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

# the facts model lives in model.py; re-exported here because the rules and their tests read it
from services.validator.model import MISSING, Facts, PathFact, PathFacts, as_facts
from trainmaster.jobenv import check_env
from trainmaster.locations import locate
from trainmaster.messages import JobRequest, Violation
from trainmaster.names import NAME_RE, PARAMETER_NAME_RE
from trainmaster.storage_roots import MARKER, Owner, not_allowed, root_of, s3_root_of, s3_roots

_BAD_VALUE_CHARS = ("\x00", "\n", "\r")

BILLING_MODES = ("on-demand",)
SOURCES = ("framework", "preset", "custom")
REMOTE_SCHEMES = ("s3",)  # object storage the service reads and writes (S3-compatible: AWS, OBS, MinIO)


def is_remote(raw: str) -> bool:
    loc = locate(raw)
    return loc.kind == "remote" and loc.path in REMOTE_SCHEMES


def normalise_url(raw: str) -> str:
    """``s3://b/a/../c//d/`` -> ``s3://b/c/d``: how overlap and containment of URLs are compared."""
    scheme, _, rest = raw.partition("://")
    bucket, _, key = rest.partition("/")
    key = posixpath.normpath("/" + key).lstrip("/") if key else ""
    return f"{scheme.lower()}://{bucket}/{key}".rstrip("/") if key else f"{scheme.lower()}://{bucket}"


def local_paths(spec: JobRequest) -> list[tuple[str, str]]:
    """``(raw, path)`` of every local absolute path in ``spec``: what ``facts.gather`` inspects."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()  # a set, not a scan of out: a request may name ten thousand paths
    for _field, raw in _locations(spec):
        loc = locate(raw)
        if loc.kind == "local" and raw not in seen:
            seen.add(raw)
            out.append((raw, loc.path))
    return out


def remote_paths(spec: JobRequest) -> list[str]:
    """Every ``s3://`` location in ``spec`` (raw strings, once each): what ``facts`` lists."""
    out: list[str] = []
    seen: set[str] = set()
    for _field, raw in _locations(spec):
        if is_remote(raw) and raw not in seen:
            seen.add(raw)
            out.append(raw)
    return out


def _locations(spec: JobRequest) -> Iterator[tuple[str, str]]:
    for i, source in enumerate(spec.data or []):
        if source.path:
            yield f"data[{i}].path", source.path
    algo = spec.algorithm
    if algo is not None and algo.source in ("framework", "custom"):
        if algo.code_dir:
            yield "algorithm.code_dir", algo.code_dir
        if algo.boot_file:
            yield "algorithm.boot_file", algo.boot_file
    if spec.output_path:
        yield "output_path", spec.output_path
    if spec.log_path:
        yield "log_path", spec.log_path


def is_within(child: str, parent: str) -> bool:
    """``child`` is ``parent`` or lies under it (both resolved, absolute)."""
    if child == parent:
        return True
    return child.startswith(parent if parent.endswith("/") else parent + "/")


# ------------------------------------------------------------------------- the rules
def check(spec: JobRequest, facts: Facts | PathFacts) -> list[Violation]:
    """Every violation of ``spec``, in a stable order (empty: the job may run)."""
    from services.validator import catalog_rules
    from services.validator.subscriptions import check_subscription

    facts = as_facts(facts)
    out: list[Violation] = []
    out += _check_basics(spec)
    data_real = _check_data(spec, facts, out)
    _check_algorithm(spec, facts.paths, out)
    _check_destination(_OUTPUT, spec.output_path, facts.paths, data_real, out)
    _check_destination(_LOG, spec.log_path, facts.paths, data_real, out)
    out += _check_roots(spec, facts)
    out += _check_parameters(spec)
    out += _check_resources(spec)
    out += check_env(spec.env)
    out += catalog_rules.check(spec, facts)
    out += check_subscription(spec, facts.topic_exists, facts.topic_project)
    return out


def warnings(spec: JobRequest, facts: Facts | PathFacts) -> list[Violation]:
    """Things that do not stop the job but that the user should know about."""
    from services.validator import catalog_rules

    facts = as_facts(facts)
    out: list[Violation] = []
    owner = Owner(spec.account, spec.name or "")
    if spec.output_path:
        loc = locate(spec.output_path)
        fact = facts.paths.get(spec.output_path, MISSING)
        if (loc.kind == "local" or fact.remote) and fact.exists and fact.has_entries:
            where = "directory" if loc.kind == "local" else "location"
            refused = "" if loc.kind != "local" or owner.same_job(fact.marker) else (
                f"; and it holds files of something else (no {MARKER} of job {owner.name} in project "
                f"{owner.project}), so the agent will refuse to copy the outputs there: choose an empty directory")
            out.append(Violation(
                "output_path", "output_not_empty",
                f"output {where} {loc.path if loc.kind == 'local' else spec.output_path} is not empty: files the "
                f"job writes may overwrite or mix with what is there; an empty directory is recommended{refused}",
            ))
    if spec.log_path and locate(spec.log_path).kind == "local":
        fact = facts.paths.get(spec.log_path, MISSING)
        if fact.exists and fact.is_dir and fact.has_entries and not owner.same_job(fact.marker):
            out.append(Violation(
                "log_path", "log_path_not_empty",
                f"log path {locate(spec.log_path).path} holds files of something else (no {MARKER} of job "
                f"{owner.name} in project {owner.project}): the agent will refuse to write the logs there; "
                "choose an empty directory",
            ))
    out += catalog_rules.warnings(spec, facts)
    return out


def _check_basics(spec: JobRequest) -> list[Violation]:
    out: list[Violation] = []
    if not spec.name:
        out.append(_required("name", "a job name (letters, digits, '-' and '_', 1-64 characters)"))
    elif not NAME_RE.match(spec.name):
        out.append(Violation(
            "name", "invalid_name",
            f"job name {spec.name!r} is not allowed: use 1-64 letters, digits, '-' or '_'",
        ))
    if spec.billing_mode not in BILLING_MODES:
        out.append(Violation(
            "billing_mode", "unsupported_billing_mode",
            f"billing mode {spec.billing_mode!r} is not offered: the only billing mode is 'on-demand'",
        ))
    return out


def _check_data(spec: JobRequest, facts: Facts, out: list[Violation]) -> list[tuple[str, str]]:
    """Check the data sources; return ``(field, resolved location)`` of each (for overlap checks)."""
    resolved: list[tuple[str, str]] = []
    if not spec.data:
        out.append(_required("data", "at least one data source: a 'path' (local or s3://) or a 'dataset' "
                                     "with its 'version'"))
        return resolved
    paths = [s for s in spec.data if s.path]
    if len(paths) > 1 and spec.algorithm.source != "framework":
        out.append(Violation(
            "data", "several_data_paths",
            f"{len(paths)} data paths are given, but only the 'framework' algorithm source takes several data "
            f"paths (R11); a {spec.algorithm.source} job takes one path, or several datasets",
        ))
    for i, source in enumerate(spec.data):
        here = f"data[{i}]"
        if source.path and source.dataset:
            out.append(Violation(
                here, "ambiguous_source",
                f"data source {i} names both a path and a dataset: give one of them per data source",
            ))
        if source.dataset:
            if not source.version:
                out.append(_required(f"{here}.version", f"the version of dataset {source.dataset!r} to train on "
                                     "(trainmaster dataset show NAME lists them)"))
            dataset = (facts.datasets or {}).get(source.dataset)
            if dataset is not None:
                fact = facts.paths.get(dataset.location, MISSING)
                resolved.append((f"{here}.dataset", fact.real or _plain(dataset.location)))
        elif source.version:
            out.append(Violation(f"{here}.version", "version_without_dataset",
                                 f"data source {i} gives a version but no dataset: name the dataset too"))
        elif not source.path:
            out.append(_required(here, "a 'path' to the training data or a 'dataset' with its 'version'"))
        if not source.path or source.dataset:
            continue
        field = f"{here}.path"
        path = _usable(field, source.path, "data", out)
        if path is None:
            continue
        fact = facts.paths.get(source.path, MISSING)
        resolved.append((field, fact.real or path))
        if not fact.exists:
            what = "has no objects" if fact.remote else "does not exist"
            out.append(Violation(
                field, "data_path_not_found",
                f"data path {path} {what}{_because(fact)}: give an existing file or directory",
            ))
        elif not fact.readable:
            out.append(Violation(
                field, "data_path_not_readable",
                f"data path {path} cannot be read{_because(fact)}: make it readable by the service "
                "(read permission, and execute permission on directories)",
            ))
    return resolved


def _plain(location: str) -> str:
    return normalise_url(location) if is_remote(location) else locate(location).path or location


def _check_algorithm(spec: JobRequest, facts: PathFacts, out: list[Violation]) -> None:
    algo = spec.algorithm
    if algo.source not in SOURCES:
        out.append(Violation(
            "algorithm.source", "unsupported_source",
            f"algorithm source {algo.source!r} is unknown: use 'framework' (engine, code directory, boot file), "
            "'preset' (a built-in algorithm) or 'custom' (a container image)",
        ))
        return
    if algo.source == "preset":
        return  # the preset's name and parameters are checked against the catalog (catalog_rules)
    if algo.source == "custom":
        if not algo.image:
            out.append(_required("algorithm.image", "the container image to run, e.g. registry.example.com/me/"
                                 "trainer:1.0"))
        if not algo.code_dir and not algo.boot_file:
            return  # the image carries its code
    elif not algo.engine:
        out.append(_required("algorithm.engine", "the AI engine the code is written for (e.g. scikit-learn)"))
    code_dir = boot = None
    code_fact = boot_fact = MISSING
    if not algo.code_dir:
        if algo.source == "framework":
            out.append(_required("algorithm.code_dir", "the directory that holds the training code"))
    else:
        code_dir = _usable("algorithm.code_dir", algo.code_dir, "code directory", out)
        if code_dir is not None:
            code_fact = facts.get(algo.code_dir, MISSING)
            if not code_fact.exists:
                out.append(Violation(
                    "algorithm.code_dir", "code_dir_not_found",
                    f"code directory {code_dir} does not exist{_because(code_fact)}: "
                    "give the directory that holds the training code",
                ))
                code_dir = None
            elif not code_fact.is_dir:
                out.append(Violation(
                    "algorithm.code_dir", "code_dir_not_directory",
                    f"code directory {code_dir} is not a directory: give the directory that holds the "
                    "boot file, not a file",
                ))
                code_dir = None
    if not algo.boot_file:
        if algo.source == "framework":
            out.append(_required("algorithm.boot_file", "the boot file: the script in the code directory to run"))
    else:
        boot = _usable("algorithm.boot_file", algo.boot_file, "boot file", out)
        if boot is not None:
            boot_fact = facts.get(algo.boot_file, MISSING)
            if not boot_fact.exists:
                out.append(Violation(
                    "algorithm.boot_file", "boot_file_not_found",
                    f"boot file {boot} does not exist{_because(boot_fact)}: give the path of the script "
                    "to run, inside the code directory",
                ))
                boot = None
            elif not boot_fact.is_file:
                out.append(Violation(
                    "algorithm.boot_file", "boot_file_not_file",
                    f"boot file {boot} is not a regular file: give the path of the script to run",
                ))
                boot = None
    if code_dir is not None and boot is not None and code_fact.real and boot_fact.real:
        if boot_fact.real == code_fact.real or not is_within(boot_fact.real, code_fact.real):
            resolved = f" (it resolves to {boot_fact.real})" if boot_fact.real != boot else ""
            out.append(Violation(
                "algorithm.boot_file", "boot_file_outside_code_dir",
                f"boot file {boot}{resolved} is not inside the code directory {code_fact.real}: "
                "the code directory is what the job receives, so put the boot file in it "
                "(no '..' or symbolic links that lead out of it)",
            ))


@dataclass(frozen=True)
class _Destination:
    """A directory the job writes to (its output, its logs): how its violations are worded."""

    field: str
    noun: str
    purpose: str  # what the field is for, when it is missing
    not_directory: str  # code, then the fix when the path is a file
    not_directory_fix: str
    overlap_code: str
    overlap_fix: str
    reads_back: bool  # may it not even contain the data (the output: a job reading its own output)?


_OUTPUT = _Destination(
    "output_path", "output location", "the training output location (an empty directory is best)",
    "output_not_directory", "give a directory (an empty one is best)",
    "output_overlaps_data", "the job would write into its own input; choose a separate (empty) directory",
    reads_back=True)
_LOG = _Destination(
    "log_path", "log path", "the directory where the job's log files are stored",
    "log_path_not_directory", "give a directory for the log files",
    "log_path_in_data", "the logs would be written into the job's input; choose a separate directory",
    reads_back=False)


def _overlap(real: str, data: str, reads_back: bool) -> str | None:
    if reads_back and real == data:
        return "is the data location"
    if is_within(real, data):
        return "is inside the data location"
    if reads_back and is_within(data, real):
        return "contains the data location"
    return None


def _check_destination(dest: _Destination, value: str | None, facts: PathFacts,
                       data_real: list[tuple[str, str]], out: list[Violation]) -> None:
    if not value:
        out.append(_required(dest.field, dest.purpose))
        return
    path = _usable(dest.field, value, dest.noun, out)
    if path is None:
        return
    fact = facts.get(value, MISSING)
    if fact.exists and not fact.is_dir:
        out.append(Violation(dest.field, dest.not_directory,
                             f"{dest.noun} {path} exists and is not a directory: {dest.not_directory_fix}"))
    real = fact.real or path
    for data_field, data in data_real:
        how = _overlap(real, data, dest.reads_back)
        if how is not None:
            out.append(Violation(dest.field, dest.overlap_code,
                                 f"{dest.noun} {path} {how} {data} ({data_field}): {dest.overlap_fix}"))


_NOUNS = {"path": "data path", "dataset": "dataset location", "code_dir": "code directory",
          "boot_file": "boot file", "output_path": "output location", "log_path": "log path"}


def _check_roots(spec: JobRequest, facts: Facts) -> list[Violation]:
    """Every local path (resolved) must lie under a storage root of the job's project, and every
    s3:// location under an s3:// root when the project has one."""
    if facts.roots is None:
        return []
    located = list(_locations(spec))
    for i, source in enumerate(spec.data or []):
        dataset = (facts.datasets or {}).get(source.dataset) if source.dataset and not source.path else None
        if dataset is not None:
            located.append((f"data[{i}].dataset", dataset.location))
    out: list[Violation] = []
    held_to_s3 = bool(s3_roots(facts.roots))  # without an s3:// root, s3:// is not held to a prefix
    for field, raw in located:
        loc = locate(raw)
        if held_to_s3 and is_remote(raw) and s3_root_of(raw, facts.roots) is None:
            what = _NOUNS[field.rsplit(".", 1)[-1]]
            out.append(Violation(field, "path_not_allowed", not_allowed(what, raw, raw, spec.account, facts.roots)))
        if loc.kind != "local":
            continue
        path = posixpath.normpath(loc.path)
        real = facts.paths.get(raw, MISSING).real or path
        if root_of(real, facts.roots) is None:
            what = _NOUNS[field.rsplit(".", 1)[-1]]
            out.append(Violation(field, "path_not_allowed", not_allowed(what, path, real, spec.account, facts.roots)))
    return out


def _check_parameters(spec: JobRequest) -> list[Violation]:
    out: list[Violation] = []
    for name, value in (spec.parameters or {}).items():
        if not PARAMETER_NAME_RE.match(name):
            out.append(Violation(
                f"parameters[{json.dumps(name)}]", "invalid_parameter_name",
                f"run parameter name {name!r} is not allowed: start with a letter or '_' and use only "
                "letters, digits, '_', '.' and '-' (it is passed as --name=value)",
            ))
            continue
        if isinstance(value, str) and any(c in value for c in _BAD_VALUE_CHARS):
            out.append(Violation(
                f"parameters.{name}", "invalid_parameter_value",
                f"run parameter {name} contains a NUL or line-break character: give a single-line value",
            ))
    return out


def _check_resources(spec: JobRequest) -> list[Violation]:
    count = spec.resources.node_count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return [Violation(
            "resources.node_count", "invalid_node_count",
            f"node count {count!r} is not allowed: give 1 for single-node or more for distributed training",
        )]
    return []


# ------------------------------------------------------------------------- helpers
def _required(field: str, what: str) -> Violation:
    return Violation(field, "required", f"{field} is missing: give {what}")


def _because(fact: PathFact) -> str:
    return f" ({fact.error})" if fact.error else ""


def _usable(field: str, raw: str, what: str, out: list[Violation]) -> str | None:
    """The local path (or normalised s3:// URL) of ``raw``, or None after recording why it is not usable."""
    loc = locate(raw)
    if loc.kind == "local":
        return loc.path
    if is_remote(raw):
        s3 = normalise_url(raw)
        if not s3.split("://", 1)[1].split("/", 1)[0]:
            out.append(Violation(field, "invalid_path", f"{what} {raw!r} names no bucket: use s3://bucket/prefix"))
            return None
        return s3
    if loc.kind == "relative":
        out.append(Violation(
            field, "relative_path",
            f"{what} {raw!r} is a relative path: give an absolute path ('/...' or 'file:///...') or an "
            "s3://bucket/prefix URL; the CLI resolves relative paths for you",
        ))
    elif loc.kind == "remote":
        out.append(Violation(
            field, "unsupported_storage",
            f"{what} {raw!r} uses '{loc.path}://' storage, which the service does not read: give a local path "
            "('/...' or 'file:///...') or s3://bucket/prefix (OBS, MinIO and AWS are all reached as s3://, "
            "with the endpoint in TM_S3_ENDPOINT_URL)",
        ))
    else:
        out.append(Violation(
            field, "invalid_path",
            f"{what} {raw!r} is not a usable path: give an absolute local path ('/...' or 'file:///...') "
            "without NUL characters or a host name, or s3://bucket/prefix",
        ))
    return None
