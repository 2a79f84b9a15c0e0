"""Job files (YAML or JSON) as users write them: relative local paths are read against the file's
own folder, like docker-compose does, so a job file can travel with its code and data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainmaster.locations import locate


class JobFileError(ValueError):
    pass


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value and locate(value).kind == "relative":
        return str((base / value).resolve())
    return value


def load_job_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        spec = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise JobFileError(f"{path} is neither valid YAML nor JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise JobFileError(f"{path} must hold one job object (a mapping), not {type(spec).__name__}")
    return resolve_paths(spec, path.parent.resolve())


def resolve_paths(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    spec = dict(spec)
    for key in ("output_path", "log_path"):
        if key in spec:
            spec[key] = _resolve(spec[key], base)
    if isinstance(spec.get("data"), list):
        spec["data"] = [
            {**d, "path": _resolve(d.get("path"), base)} if isinstance(d, dict) and "path" in d else d
            for d in spec["data"]
        ]
    if isinstance(spec.get("algorithm"), dict) and "code_dir" in spec["algorithm"]:
        # the boot file stays relative: it is relative to the code directory
        spec["algorithm"] = {**spec["algorithm"], "code_dir": _resolve(spec["algorithm"]["code_dir"], base)}
    return spec


def apply_overrides(spec: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set a.b=value``: set a nested key (values parsed as YAML scalars)."""
    spec = dict(spec)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise JobFileError(f"--set {item!r}: use key=value, e.g. parameters.max_iter=300")
        node = spec
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    return spec
