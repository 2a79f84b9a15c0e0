"""The preset algorithms catalog (R12): data in ``catalogs/presets.yaml``, scripts in ``presets/``.

A preset job runs like a "common framework" job whose code directory is the presets folder and
whose boot file is the preset's script: ``as_framework`` is that mapping (the agent applies it),
with the catalog's defaults filled in for every hyperparameter the job does not set.
``check_parameters`` type-checks a job's run parameters against the preset's entry (pure).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import msgspec

from trainmaster.catalog import SHIPPED, parse_catalog
from trainmaster.messages import Algorithm, JobRequest, ParamValue

PRESETS_DIR = Path(__file__).with_name("presets")

ParamType = Literal["int", "float", "str", "bool"]
_INT_RE = re.compile(r"^[+-]?\d+$")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class PresetParameter(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    type: ParamType
    default: ParamValue | None = None
    min: float | None = None
    max: float | None = None
    choices: list[str] | None = None
    doc: str = ""


class Preset(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    description: str
    engine: str
    engine_version: str
    boot_file: str
    parameters: list[PresetParameter]
    outputs: list[str] = []
    code_dir: str | None = None  # None: the presets folder shipped with trainmaster

    @property
    def folder(self) -> str:
        return self.code_dir or str(PRESETS_DIR)

    def parameter(self, name: str) -> PresetParameter | None:
        return next((p for p in self.parameters if p.name == name), None)


class PresetCatalog(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    presets: list[Preset]

    def preset(self, name: str | None) -> Preset | None:
        return next((p for p in self.presets if p.name == name), None) if name else None


def parse_presets(text: str, source: str = "presets.yaml") -> PresetCatalog:
    return parse_catalog(text, PresetCatalog, source)


@lru_cache
def load_presets(catalog_dir: Path | None = None) -> PresetCatalog:
    path = (catalog_dir or SHIPPED) / "presets.yaml"
    if catalog_dir is not None and not path.exists():
        path = SHIPPED / "presets.yaml"  # a catalog folder without presets keeps the shipped ones
    return parse_presets(path.read_text(encoding="utf-8"), str(path))


# ------------------------------------------------------------------------------ parameters
def coerce(param: PresetParameter, value: ParamValue) -> ParamValue:
    """The value as the parameter's type, or ValueError saying why not.  Values arrive as strings
    after job-intake's normalisation ("200", "0.1", "true"), so strings are parsed."""
    text = str(value).strip() if not isinstance(value, bool) else ("true" if value else "false")
    if param.type == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("is not a boolean (true or false)")
    if param.type == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("is not an integer")
        if not _INT_RE.match(text):
            raise ValueError("is not an integer")
        number: float = int(text)
    elif param.type == "float":
        try:
            number = float(text)
        except ValueError:
            raise ValueError("is not a number") from None
        if not math.isfinite(number):
            raise ValueError("is not a finite number")
    else:
        if param.choices is not None and text not in param.choices:
            raise ValueError(f"is not one of {', '.join(param.choices)}")
        return text
    if param.min is not None and number < param.min:
        raise ValueError(f"is below the minimum {param.min:g}")
    if param.max is not None and number > param.max:
        raise ValueError(f"is above the maximum {param.max:g}")
    return number


def check_parameters(preset: Preset, parameters: dict[str, ParamValue]) -> list[tuple[str, str, str]]:
    """``(name, code, message)`` for each run parameter the preset does not take or whose value
    does not fit its type and range."""
    out: list[tuple[str, str, str]] = []
    for name, value in parameters.items():
        param = preset.parameter(name)
        if param is None:
            known = ", ".join(p.name for p in preset.parameters)
            out.append((name, "unknown_parameter",
                        f"preset {preset.name} has no parameter {name!r}; its parameters are: {known}"))
            continue
        try:
            coerce(param, value)
        except ValueError as exc:
            out.append((name, "invalid_parameter_value",
                        f"run parameter {name}={value!r} {exc}: preset {preset.name} takes {describe(param)}"))
    return out


def describe(param: PresetParameter) -> str:
    """``an integer in [1, 10000]``, ``one of a, b``, ``true or false``: what a parameter takes."""
    if param.choices:
        return "one of " + ", ".join(param.choices)
    what = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}[param.type]
    if param.min is not None and param.max is not None:
        return f"{what} in [{param.min:g}, {param.max:g}]"
    if param.min is not None:
        return f"{what} >= {param.min:g}"
    if param.max is not None:
        return f"{what} <= {param.max:g}"
    return what


def _as_text(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_framework(spec: JobRequest, catalog: PresetCatalog) -> JobRequest:
    """A preset job as the framework job that runs it: the preset's engine, folder and script,
    and every hyperparameter explicit (the catalog's default where the job sets none).  Other
    jobs are returned unchanged; an unknown preset raises LookupError."""
    algo = spec.algorithm
    if algo.source != "preset":
        return spec
    preset = catalog.preset(algo.preset)
    if preset is None:
        raise LookupError(f"unknown preset algorithm {algo.preset!r}")
    params = {p.name: _as_text(p.default) for p in preset.parameters if p.default is not None}
    params.update({k: _as_text(v) for k, v in spec.parameters.items()})
    return msgspec.structs.replace(
        spec,
        algorithm=Algorithm(source="framework", engine=preset.engine, engine_version=preset.engine_version,
                            code_dir=preset.folder, boot_file=str(Path(preset.folder) / preset.boot_file)),
        parameters=params,
    )
