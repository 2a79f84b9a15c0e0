"""The validator's rules that read catalogs and registries (pure, like ``rules.py``).

Engines (R13, R19), preset algorithms and their hyperparameters (R12, R15), custom images (R14),
pools, flavors and node counts (R18, R19), who may use a dedicated pool, the account's balance
(R5), datasets and versions (R10) of the job's own project, the region of object storage (R6),
file names longer than 255 characters (R7), and the code scan's warnings: CUDA on a CPU flavor
(R18), imports of another engine (R13).
"""

from __future__ import annotations

import re

from services.validator.model import MISSING, Facts
from trainmaster.algorithms import check_parameters
from trainmaster.locations import locate
from trainmaster.messages import JobRequest, Violation

# registry/name[:tag][@sha256:digest], lower-case path components (the OCI distribution grammar, simplified)
IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
MAX_FINDINGS = 5


def check(spec: JobRequest, facts: Facts) -> list[Violation]:
    out: list[Violation] = []
    _engine(spec, facts, out)
    _preset(spec, facts, out)
    _custom(spec, out)
    _resources(spec, facts, out)
    _account(spec, facts, out)
    _datasets(spec, facts, out)
    _regions(spec, facts, out)
    _file_names(spec, facts, out)
    if facts.code is not None and facts.code.requirements_outside:
        out.append(Violation(
            "algorithm.code_dir", "requirements_outside_code_dir",
            "requirements.txt in the code directory is a symbolic link that leads out of it: put the "
            "requirements file itself in the code directory",
        ))
    return out


def warnings(spec: JobRequest, facts: Facts) -> list[Violation]:
    out: list[Violation] = []
    _long_name_warnings(spec, facts, out)
    code = facts.code
    if code is None:
        return out
    flavor = _flavor(spec, facts)
    if code.cuda and flavor is not None and flavor.gpus == 0:
        where = "; ".join(f"{f.file}:{f.line}: {f.text}" for f in code.cuda[:MAX_FINDINGS])
        more = f" (and {len(code.cuda) - MAX_FINDINGS} more)" if len(code.cuda) > MAX_FINDINGS else ""
        out.append(Violation(
            "resources.flavor", "cuda_on_cpu_flavor",
            f"the code uses CUDA ({where}{more}) but flavor {flavor.name} of pool {spec.resources.pool} has no "
            "GPU: on a CPU pool such code fails; choose a GPU pool (e.g. pool 'gpu') or make the code fall back "
            "to the CPU",
        ))
    engine = facts.engines.engine(spec.algorithm.engine or "") if spec.algorithm.source == "framework" else None
    if engine is not None and code.imports:
        others = sorted({e.name for e in facts.engines.engines if e.name != engine.name
                         and code.imports & set(e.imports)})
        if others and not code.imports & set(engine.imports):
            seen = sorted(code.imports & {m for e in facts.engines.engines for m in e.imports})
            out.append(Violation(
                "algorithm.engine", "engine_import_mismatch",
                f"the code imports {', '.join(seen)} ({', '.join(others)}) but not {', '.join(engine.imports)}: "
                f"engine {engine.name} may not match the framework the code is written for",
            ))
    return out


# ------------------------------------------------------------------------------ the rules
def _engine(spec: JobRequest, facts: Facts, out: list[Violation]) -> None:
    algo = spec.algorithm
    if algo.source != "framework" or not algo.engine:
        return
    engine = facts.engines.engine(algo.engine)
    if engine is None:
        names = ", ".join(e.name for e in facts.engines.engines)
        out.append(Violation("algorithm.engine", "unknown_engine",
                             f"engine {algo.engine!r} is not in the engine catalog: use one of {names}"))
        return
    if engine.version(algo.engine_version) is None:
        versions = ", ".join(v.version for v in engine.versions)
        out.append(Violation("algorithm.engine_version", "unknown_engine_version",
                             f"{engine.name} has no version {algo.engine_version!r}: use one of {versions}"))
    if not engine.distributed and spec.resources.node_count > 1:
        out.append(Violation("resources.node_count", "engine_single_node",
                             f"{engine.name} runs on one node only, but node_count is {spec.resources.node_count}: "
                             "set node_count to 1"))


def _preset(spec: JobRequest, facts: Facts, out: list[Violation]) -> None:
    algo = spec.algorithm
    if algo.source != "preset":
        return
    if not algo.preset:
        out.append(Violation("algorithm.preset", "required", "algorithm.preset is missing: give the name of a "
                             "preset algorithm (trainmaster algorithm list)"))
        return
    preset = facts.presets.preset(algo.preset)
    if preset is None:
        names = ", ".join(p.name for p in facts.presets.presets)
        out.append(Violation("algorithm.preset", "unknown_preset",
                             f"there is no preset algorithm {algo.preset!r}: use one of {names}"))
        return
    for name, code, message in check_parameters(preset, dict(spec.parameters)):
        out.append(Violation(f"parameters.{name}", code, message))
    engine = facts.engines.engine(preset.engine)
    if engine is not None and not engine.distributed and spec.resources.node_count > 1:
        out.append(Violation("resources.node_count", "engine_single_node",
                             f"preset {preset.name} runs on one node only: set node_count to 1"))


def _custom(spec: JobRequest, out: list[Violation]) -> None:
    algo = spec.algorithm
    if algo.source != "custom":
        return
    if algo.image and not IMAGE_RE.match(algo.image):
        out.append(Violation("algorithm.image", "invalid_image",
                             f"image {algo.image[:200]!r} is not an image reference: use [registry/]name[:tag]"
                             "[@sha256:digest], lower-case, e.g. registry.example.com/team/trainer:1.0"))
    for i, arg in enumerate(algo.command or []):
        if "\x00" in arg:
            out.append(Violation(f"algorithm.command[{i}]", "invalid_command",
                                 "a command argument contains a NUL character"))


def _flavor(spec: JobRequest, facts: Facts):
    pool = facts.resources.pool(spec.resources.pool)
    return pool.flavor(spec.resources.flavor) if pool is not None else None


def _resources(spec: JobRequest, facts: Facts, out: list[Violation]) -> None:
    res = spec.resources
    pool = facts.resources.pool(res.pool)
    if pool is None:
        names = ", ".join(p.name for p in facts.resources.pools)
        out.append(Violation("resources.pool", "unknown_pool",
                             f"there is no resource pool {res.pool!r}: use one of {names}"))
        return
    if not pool.admits(spec.account):
        allowed = ", ".join(pool.accounts or []) or "no account"
        others = ", ".join(p.name for p in facts.resources.pools if p.admits(spec.account))
        fix = f"use a pool open to it ({others})" if others else "no pool is open to it"
        out.append(Violation("resources.pool", "pool_not_allowed",
                             f"pool {pool.name} is dedicated to {allowed}, and account {spec.account} is not one of "
                             f"them: {fix}, or run the job for one of those accounts (account)"))
    if pool.flavor(res.flavor) is None:
        names = ", ".join(f.name for f in pool.flavors)
        out.append(Violation("resources.flavor", "unknown_flavor",
                             f"pool {pool.name!r} has no flavor {res.flavor!r}: use one of {names}"))
    if pool.max_nodes is not None and res.node_count > pool.max_nodes:
        out.append(Violation("resources.node_count", "pool_too_small",
                             f"{res.node_count} nodes can never fit pool {pool.name}, which has at most "
                             f"{pool.max_nodes}: ask for {pool.max_nodes} or fewer, or use another pool"))


def _account(spec: JobRequest, facts: Facts, out: list[Violation]) -> None:
    account = facts.account
    if account is None:
        return
    if not account.exists:
        out.append(Violation("account", "unknown_account",
                             f"there is no account {account.name!r}: name an existing account "
                             "(trainmaster account list) or credit this one first"))
    elif account.balance < 0:
        out.append(Violation("account", "account_in_arrears",
                             f"account {account.name} is in arrears (balance {account.balance:.2f} "
                             f"{account.currency}): jobs cannot start until it is credited "
                             f"(trainmaster account credit {account.name} AMOUNT)"))


def _datasets(spec: JobRequest, facts: Facts, out: list[Violation]) -> None:
    if facts.datasets is None:
        return
    for i, source in enumerate(spec.data):
        if not source.dataset:
            continue
        dataset = facts.datasets.get(source.dataset)
        if dataset is None:
            out.append(Violation(f"data[{i}].dataset", "dataset_not_found",
                                 f"there is no dataset {source.dataset!r}: create it (trainmaster dataset create) "
                                 "or name an existing one (trainmaster dataset list)"))
        elif dataset.project != spec.account:
            out.append(Violation(f"data[{i}].dataset", "dataset_not_allowed",
                                 f"dataset {source.dataset} belongs to project {dataset.project!r} and this job to "
                                 f"{spec.account!r}: a job trains only on its own project's datasets (set "
                                 f"`account` to {dataset.project!r}, or use a dataset of {spec.account!r})"))
        elif source.version and source.version not in dataset.versions:
            known = ", ".join(sorted(dataset.versions)) or "none published yet"
            out.append(Violation(f"data[{i}].version", "dataset_version_not_found",
                                 f"dataset {source.dataset} has no version {source.version!r} (versions: {known}); "
                                 f"publish one with trainmaster dataset publish {source.dataset}"))


def _regions(spec: JobRequest, facts: Facts, out: list[Violation]) -> None:
    if facts.region is None:
        return
    fields: list[tuple[str, str]] = []
    for i, source in enumerate(spec.data):
        if source.path:
            fields.append((f"data[{i}].path", source.path))
        elif source.dataset and facts.datasets and source.dataset in facts.datasets:
            fields.append((f"data[{i}].dataset", facts.datasets[source.dataset].location))
    algo = spec.algorithm
    for name in ("code_dir", "boot_file"):
        if getattr(algo, name):
            fields.append((f"algorithm.{name}", getattr(algo, name)))
    fields += [(f, v) for f, v in (("output_path", spec.output_path), ("log_path", spec.log_path)) if v]
    for field, raw in fields:
        fact = facts.paths.get(raw, MISSING)
        if fact.remote and fact.region and fact.region != facts.region:
            out.append(Violation(field, "storage_region_mismatch",
                                 f"{raw} is in a bucket of region {fact.region}, but the service runs in region "
                                 f"{facts.region}: use a bucket in {facts.region} (R6)"))


def _counts(spec: JobRequest, facts: Facts) -> list[tuple[str, int, int]]:
    """``(field, files, long names)`` of each data source whose files are known."""
    out: list[tuple[str, int, int]] = []
    for i, source in enumerate(spec.data):
        if source.path and locate(source.path).kind == "remote":
            fact = facts.paths.get(source.path, MISSING)
            if fact.exists:
                out.append((f"data[{i}].path", fact.files, fact.long_names))
        elif source.dataset and source.version and facts.datasets and source.dataset in facts.datasets:
            version = facts.datasets[source.dataset].versions.get(source.version)
            if version is not None:
                out.append((f"data[{i}].dataset", version.files, version.long_names))
    return out


def _file_names(spec: JobRequest, facts: Facts, out: list[Violation]) -> None:
    counts = _counts(spec, facts)
    if counts and all(files - long_names <= 0 for _, files, long_names in counts):
        total = sum(long for _, _, long in counts)
        out.append(Violation("data", "no_usable_data_files",
                             f"no data file is left to train on: all {total} file(s) have a name longer than "
                             "255 characters, and such files are skipped (R7); rename them"))


def _long_name_warnings(spec: JobRequest, facts: Facts, out: list[Violation]) -> None:
    for field, files, long_names in _counts(spec, facts):
        if long_names and files - long_names > 0:
            out.append(Violation(field, "long_file_names_skipped",
                                 f"{long_names} of {files} file(s) have a name longer than 255 characters and are "
                                 "skipped; training goes on with the others (R7)"))
