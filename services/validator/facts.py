"""The validator's adapters: everything the rules need to know, gathered as plain data.

- ``gather(spec)``: ``os.stat`` of every local path (blocking; run in a worker thread).
- ``collect(spec, ...)``: all facts (``model.Facts``): local paths, s3:// locations (listing,
  file counts, names longer than 255 characters, the bucket's region) through ``storage.py``,
  datasets and versions, the account, the topic, and a scan of a local code directory.  Lookups
  in the registries come in as async callables, so this module knows no bucket.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from services.validator import codescan
from services.validator.model import AccountFact, DatasetFact, Facts, PathFact, VersionFact
from services.validator.rules import is_remote, local_paths, normalise_url, remote_paths
from trainmaster.algorithms import load_presets
from trainmaster.catalog import load_engines, load_resources
from trainmaster.locations import locate
from trainmaster.messages import Account, Dataset, DatasetVersion, JobRequest
from trainmaster.storage import Storage, StorageError
from trainmaster.storage_roots import MARKER, MARKER_MAX_BYTES, is_s3, read_marker

NAME_MAX = 255  # R7: longer file names are skipped


def gather(spec: JobRequest, extra: list[str] | None = None) -> dict[str, PathFact]:
    """A ``PathFact`` for every local absolute path in ``spec`` (and in ``extra``), keyed by the raw string."""
    found = {raw: inspect(path) for raw, path in local_paths(spec)}
    for raw in extra or []:
        loc = locate(raw)
        if loc.kind == "local" and raw not in found:
            found[raw] = inspect(loc.path)
    return found


def inspect(path: str) -> PathFact:
    """What the filesystem says about ``path`` now (following symbolic links)."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError) as exc:
        return PathFact(error=_why(exc))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return PathFact(real=real)
    except (OSError, ValueError) as exc:
        # e.g. a parent directory we may not search: we cannot tell whether it exists
        return PathFact(real=real, error=_why(exc))
    is_dir = stat.S_ISDIR(st.st_mode)
    is_file = stat.S_ISREG(st.st_mode)
    readable = os.access(path, os.R_OK | (os.X_OK if is_dir else 0))
    has_entries = False
    marker = None
    if is_dir and readable:
        try:
            with os.scandir(path) as entries:
                has_entries = next(entries, None) is not None
        except OSError:
            readable = False
        if has_entries:
            marker = read_marker(_read_small(os.path.join(path, MARKER)))
    return PathFact(exists=True, is_dir=is_dir, is_file=is_file, readable=readable, real=real,
                    has_entries=has_entries, marker=marker)


def _read_small(path: str) -> bytes | None:
    """A small regular file's bytes (not through a symbolic link), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, MARKER_MAX_BYTES + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def resolve_roots(roots: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The storage roots as the rules compare them: local ones resolved like the paths (realpath)."""
    return tuple(dict.fromkeys(root if is_s3(root) else os.path.realpath(root) for root in roots))


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def long_name(relative: str) -> bool:
    return any(len(part) > NAME_MAX for part in relative.split("/"))


# ------------------------------------------------------------------------------ everything
@dataclass
class Lookups:
    """Registry lookups (async); each answers None when the thing does not exist."""

    dataset: Callable[[str], Awaitable[Dataset | None]]
    version: Callable[[str, str], Awaitable[DatasetVersion | None]]
    account: Callable[[str], Awaitable[Account | None]]
    topic_project: Callable[[str], Awaitable[str | None]]  # the project of a topic; None: no such topic


async def inspect_remote(storage: Storage, raw: str, regions: dict[str, str | None], *,
                         listing: bool = True) -> PathFact:
    url = normalise_url(raw)
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if bucket not in regions:
        try:
            regions[bucket] = await storage.bucket_region(url)
        except StorageError:
            regions[bucket] = None  # the listing below says what is wrong
    region = regions[bucket]
    if not listing:
        return PathFact(remote=True, real=url, region=region)
    try:
        files = await storage.list(url)
        single = None if files else await storage.stat(url)
    except StorageError as exc:
        return PathFact(remote=True, real=url, region=region, error=str(exc).split(": ", 1)[-1])
    if single is not None:
        return PathFact(exists=True, is_file=True, readable=True, remote=True, real=url, region=region, files=1,
                        long_names=int(long_name(single.relative)))
    return PathFact(exists=bool(files), is_dir=bool(files), readable=bool(files), has_entries=bool(files),
                    remote=True, real=url, region=region, files=len(files),
                    long_names=sum(1 for f in files if long_name(f.relative)))


def catalogs(catalog_dir: Path | None) -> dict:
    """The catalogs of ``TM_CATALOG_DIR`` (each file that is missing there: the shipped one)."""
    def pick(file: str) -> Path | None:
        return catalog_dir if catalog_dir is not None and (catalog_dir / file).exists() else None

    return {"engines": load_engines(pick("engines.yaml")), "resources": load_resources(pick("resources.yaml")),
            "presets": load_presets(pick("presets.yaml"))}


async def collect(spec: JobRequest, *, storage: Storage | None, lookups: Lookups | None,
                  region: str | None, default_account: str = "default", catalog_dir: Path | None = None,
                  roots: Callable[[str], tuple[str, ...]] | None = None) -> Facts:
    """Every fact the rules read about ``spec`` (see module doc); ``roots``: the storage roots of a
    project (unresolved), or None to leave them unchecked."""
    datasets: dict[str, DatasetFact] | None = None
    dataset_locations: list[str] = []
    account: AccountFact | None = None
    topic_exists: bool | None = None
    topic_project: str | None = None
    if lookups is not None:
        datasets = {}
        for source in spec.data:
            if not source.dataset or source.dataset in datasets:
                continue
            dataset = await lookups.dataset(source.dataset)
            if dataset is None:
                continue
            versions: dict[str, VersionFact] = {}
            for other in spec.data:
                if other.dataset == dataset.name and other.version and other.version not in versions:
                    manifest = await lookups.version(dataset.name, other.version)
                    if manifest is not None:
                        versions[other.version] = VersionFact(
                            len(manifest.files), sum(1 for f in manifest.files if long_name(f.path)))
            datasets[dataset.name] = DatasetFact(dataset.location, versions, dataset.project)
            dataset_locations.append(dataset.location)
        name = getattr(spec, "account", None) or default_account
        found = await lookups.account(name)
        account = AccountFact(name, found is not None, found.balance if found else 0.0,
                              found.currency if found else "")
        if spec.subscription is not None and spec.subscription.topic:
            topic_project = await lookups.topic_project(spec.subscription.topic)
            topic_exists = topic_project is not None

    paths = await asyncio.to_thread(gather, spec, dataset_locations)
    resolved = None if roots is None else await asyncio.to_thread(resolve_roots, roots(spec.account))
    if storage is not None:
        regions: dict[str, str | None] = {}
        for raw in remote_paths(spec):
            paths[raw] = await inspect_remote(storage, raw, regions)
        for raw in dataset_locations:
            if is_remote(raw) and raw not in paths:
                paths[raw] = await inspect_remote(storage, raw, regions, listing=False)

    code = None
    algo = spec.algorithm
    if algo.source in ("framework", "custom") and algo.code_dir and locate(algo.code_dir).kind == "local":
        code = await asyncio.to_thread(codescan.scan, locate(algo.code_dir).path)
    return Facts(paths=paths, datasets=datasets, account=account, topic_exists=topic_exists,
                 topic_project=topic_project, region=region if storage is not None else None, code=code,
                 roots=resolved, **catalogs(catalog_dir))
