"""The validator's pure core: ``check(spec, facts)`` returns every violation of a job request at once.

No I/O here.  What the rules know about the filesystem comes in ``facts``: one ``PathFact`` per
local path the spec mentions, keyed by the raw string as written in the spec (``facts.gather``
builds it).  Each violation carries a field path (``algorithm.boot_file``, ``data[1].path``,
``parameters.max_iter``), a stable snake_case code and a message saying what is wrong and how to
fix it.  The codes are part of the public contract: see README.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from trainmaster.locations import locate
from trainmaster.messages import JobRequest, Violation

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_BAD_VALUE_CHARS = ("\x00", "\n", "\r")

BILLING_MODES = ("on-demand",)
SUPPORTED_SOURCES = ("framework",)
LATER_SOURCES = ("preset", "custom")


# ------------------------------------------------------------------------- the facts
@dataclass(frozen=True)
class PathFact:
    """What the filesystem said about one local path when the facts were gathered."""

    exists: bool = False
    is_dir: bool = False
    is_file: bool = False
    readable: bool = False
    real: str = ""  # os.path.realpath of the path (symlinks and ``..`` resolved)
    has_entries: bool = False  # a directory with at least one entry
    error: str | None = None  # why the path could not be inspected (e.g. permission denied)


PathFacts = Mapping[str, PathFact]
MISSING = PathFact()




def local_paths(spec: JobRequest) -> list[tuple[str, str]]:
    """``(raw, path)`` of every local absolute path in ``spec``: what ``facts.gather`` inspects."""
    out: list[tuple[str, str]] = []
    for _field, raw in _locations(spec):
        loc = locate(raw)
        if loc.kind == "local" and all(raw != seen for seen, _ in out):
            out.append((raw, loc.path))
    return out


def _locations(spec: JobRequest) -> Iterator[tuple[str, str]]:
    for i, source in enumerate(spec.data or []):
        if source.path:
            yield f"data[{i}].path", source.path
    algo = spec.algorithm
    if algo is not None and algo.source == "framework":
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
def check(spec: JobRequest, facts: PathFacts) -> list[Violation]:
    """Every violation of ``spec``, in a stable order (empty: the job may run)."""
    out: list[Violation] = []
    out += _check_basics(spec)
    data_real = _check_data(spec, facts, out)
    _check_algorithm(spec, facts, out)
    _check_output(spec, facts, data_real, out)
    _check_log(spec, facts, data_real, out)
    out += _check_parameters(spec)
    out += _check_resources(spec)
    return out


def warnings(spec: JobRequest, facts: PathFacts) -> list[Violation]:
    """Things that do not stop the job but that the user should know about."""
    out: list[Violation] = []
    if spec.output_path:
        loc = locate(spec.output_path)
        fact = facts.get(spec.output_path, MISSING)
        if loc.kind == "local" and fact.exists and fact.is_dir and fact.has_entries:
            out.append(Violation(
                "output_path", "output_not_empty",
                f"output directory {loc.path} is not empty: files the job writes may overwrite or mix with "
                "what is there; an empty directory is recommended",
            ))
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


def _check_data(spec: JobRequest, facts: PathFacts, out: list[Violation]) -> list[tuple[str, str]]:
    """Check the data sources; return ``(field, resolved path)`` of the local ones."""
    resolved: list[tuple[str, str]] = []
    if not spec.data:
        out.append(_required("data", "at least one data source (a 'path' to the training data)"))
        return resolved
    for i, source in enumerate(spec.data):
        here = f"data[{i}]"
        if source.path and source.dataset:
            out.append(Violation(
                here, "ambiguous_source",
                f"data source {i} names both a path and a dataset: give one of them per data source",
            ))
        if source.dataset:
            out.append(Violation(
                f"{here}.dataset", "unsupported_source",
                "dataset sources come in a later release: give the 'path' of the data directory instead",
            ))
        elif not source.path:
            out.append(_required(here, "a 'path' to the training data"))
        if not source.path:
            continue
        field = f"{here}.path"
        path = _local(field, source.path, "data", out)
        if path is None:
            continue
        fact = facts.get(source.path, MISSING)
        resolved.append((field, fact.real or path))
        if not fact.exists:
            out.append(Violation(
                field, "data_path_not_found",
                f"data path {path} does not exist{_because(fact)}: give an existing file or directory",
            ))
        elif not fact.readable:
            out.append(Violation(
                field, "data_path_not_readable",
                f"data path {path} cannot be read{_because(fact)}: make it readable by the service "
                "(read permission, and execute permission on directories)",
            ))
    return resolved


def _check_algorithm(spec: JobRequest, facts: PathFacts, out: list[Violation]) -> None:
    algo = spec.algorithm
    if algo.source in LATER_SOURCES:
        out.append(Violation(
            "algorithm.source", "unsupported_source",
            f"algorithm source {algo.source!r} comes in a later release: use source 'framework' "
            "with an engine, a code directory and a boot file",
        ))
        return
    if algo.source not in SUPPORTED_SOURCES:
        out.append(Violation(
            "algorithm.source", "unsupported_source",
            f"algorithm source {algo.source!r} is unknown: use 'framework'",
        ))
        return
    if not algo.engine:
        out.append(_required("algorithm.engine", "the AI engine the code is written for (e.g. scikit-learn)"))
    code_dir = boot = None
    code_fact = boot_fact = MISSING
    if not algo.code_dir:
        out.append(_required("algorithm.code_dir", "the directory that holds the training code"))
    else:
        code_dir = _local("algorithm.code_dir", algo.code_dir, "code directory", out)
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
        out.append(_required("algorithm.boot_file", "the boot file: the script in the code directory to run"))
    else:
        boot = _local("algorithm.boot_file", algo.boot_file, "boot file", out)
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


def _check_output(spec: JobRequest, facts: PathFacts, data_real: list[tuple[str, str]],
                  out: list[Violation]) -> None:
    if not spec.output_path:
        out.append(_required("output_path", "the training output location (an empty directory is best)"))
        return
    path = _local("output_path", spec.output_path, "output location", out)
    if path is None:
        return
    fact = facts.get(spec.output_path, MISSING)
    if fact.exists and not fact.is_dir:
        out.append(Violation(
            "output_path", "output_not_directory",
            f"output location {path} exists and is not a directory: give a directory (an empty one is best)",
        ))
    real = fact.real or path
    for data_field, data in data_real:
        if real == data:
            how = "is the data location"
        elif is_within(real, data):
            how = "is inside the data location"
        elif is_within(data, real):
            how = "contains the data location"
        else:
            continue
        out.append(Violation(
            "output_path", "output_overlaps_data",
            f"output location {path} {how} {data} ({data_field}): the job would write into its own "
            "input; choose a separate (empty) directory",
        ))


def _check_log(spec: JobRequest, facts: PathFacts, data_real: list[tuple[str, str]],
               out: list[Violation]) -> None:
    if not spec.log_path:
        out.append(_required("log_path", "the directory where the job's log files are stored"))
        return
    path = _local("log_path", spec.log_path, "log path", out)
    if path is None:
        return
    fact = facts.get(spec.log_path, MISSING)
    if fact.exists and not fact.is_dir:
        out.append(Violation(
            "log_path", "log_path_not_directory",
            f"log path {path} exists and is not a directory: give a directory for the log files",
        ))
    real = fact.real or path
    for data_field, data in data_real:
        if is_within(real, data):
            out.append(Violation(
                "log_path", "log_path_in_data",
                f"log path {path} is inside the data location {data} ({data_field}): the logs would be "
                "written into the job's input; choose a separate directory",
            ))


def _check_parameters(spec: JobRequest) -> list[Violation]:
    out: list[Violation] = []
    for name, value in (spec.parameters or {}).items():
        if not PARAM_NAME_RE.match(name):
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


def _local(field: str, raw: str, what: str, out: list[Violation]) -> str | None:
    """The local path of ``raw``, or None after recording why it is not usable."""
    loc = locate(raw)
    if loc.kind == "local":
        return loc.path
    if loc.kind == "relative":
        out.append(Violation(
            field, "relative_path",
            f"{what} {raw!r} is a relative path: give an absolute path ('/...' or 'file:///...'); "
            "the CLI resolves relative paths for you",
        ))
    elif loc.kind == "remote":
        out.append(Violation(
            field, "unsupported_storage",
            f"{what} {raw!r} uses '{loc.path}://' storage, which comes in a later release: "
            "give a local path ('/...' or 'file:///...') for now",
        ))
    else:
        out.append(Violation(
            field, "invalid_path",
            f"{what} {raw!r} is not a usable path: give an absolute local path ('/...' or 'file:///...') "
            "without NUL characters or a host name",
        ))
    return None
