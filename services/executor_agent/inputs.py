"""The agent's side of preset algorithms and datasets: turn an ``Assign`` into one the
launch code already knows how to run.

- A preset job (R12) becomes a framework job whose code directory is the presets folder and whose
  boot file is the preset's script, every hyperparameter explicit (``algorithms.as_framework``).
- A dataset source (R10) becomes a local folder under the run folder holding exactly the files of
  the version's manifest (read from ``tm_dataset_versions``): files added to the location since
  are not there, and a file that is gone or changed size (local) / changed ETag (s3) refuses the
  node with the reason.  Local data is linked (no copy), s3 objects are downloaded.  Files whose
  name has a component longer than 255 characters are skipped (R7); none left fails the node.

Called by the agent before it plans a node (see ``app.Agent.assign``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.executor_agent.destinations import check_path, check_s3
from services.executor_agent.launch import Refused
from trainmaster.algorithms import as_framework, load_presets
from trainmaster.locations import locate
from trainmaster.messages import Assign, DatasetVersion, DataSource, ManifestFile
from trainmaster.settings import Settings
from trainmaster.storage import ObjectInfo, Storage, StorageError

NAME_MAX = 255
DATASETS_DIR = "datasets"


def usable(files: list[ManifestFile]) -> list[ManifestFile]:
    return [f for f in files if all(len(part) <= NAME_MAX for part in f.path.split("/"))]


def link_local(location: Path, files: list[ManifestFile], dest: Path, project: str = "",
               roots: Sequence[str] | None = None) -> None:
    """A folder of symbolic links to exactly ``files`` under ``location`` (blocking); with ``roots``,
    the location and each file must resolve under one of them (the job follows the links)."""
    if roots is not None:
        check_path(str(location), "dataset location", project, roots)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in files:
        source = location / f.path
        try:
            size = source.stat().st_size
        except OSError:
            raise Refused(f"dataset file {f.path} is gone from {location} since the version was published") from None
        if size != f.size:
            raise Refused(f"dataset file {f.path} in {location} changed since the version was published "
                          f"({f.size} bytes then, {size} now)")
        if roots is not None:
            check_path(str(source), "dataset file", project, roots)
        target = dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source, target)


async def fetch_s3(storage: Storage, location: str, files: list[ManifestFile], dest: Path) -> None:
    try:
        now = {o.relative: o for o in await storage.list(location)}
    except StorageError as exc:
        raise Refused(f"cannot read dataset location {location}: {exc}", 1) from exc
    for f in files:
        current = now.get(f.path)
        if current is None:
            raise Refused(f"dataset object {f.path} is gone from {location} since the version was published")
        if f.checksum and current.checksum and current.checksum != f.checksum:
            raise Refused(f"dataset object {f.path} in {location} changed since the version was published")
    await asyncio.to_thread(shutil.rmtree, dest, True)
    try:
        await storage.download(location, dest, files=[ObjectInfo(f.path, f.size, f.checksum) for f in files])
    except StorageError as exc:
        raise Refused(f"cannot download dataset {location}: {exc}", 1) from exc


class Inputs:
    def __init__(self, settings: Settings, versions: KeyValue) -> None:
        self.settings = settings
        self.versions = versions
        self.storage = Storage(settings)
        self.presets = load_presets(settings.catalog.catalog_dir)

    async def manifest(self, name: str, version: str) -> DatasetVersion:
        try:
            entry = await self.versions.get(f"{name}.{version}")
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            raise Refused(f"dataset {name} has no version {version}")
        return msgspec.json.decode(entry.value, type=DatasetVersion)

    async def prepare(self, cmd: Assign, run_dir: Path, roots: Sequence[str] | None = None) -> Assign:
        """The assignment with presets mapped and dataset sources staged (or ``Refused``); with
        ``roots``, a dataset must lie under the storage roots of the job's project."""
        spec = cmd.spec
        if spec.algorithm.source == "preset":
            try:
                spec = as_framework(spec, self.presets)
            except LookupError as exc:
                raise Refused(str(exc)) from None
        if any(d.dataset for d in spec.data):
            data: list[DataSource] = []
            for i, source in enumerate(spec.data):
                if not source.dataset:
                    data.append(source)
                    continue
                manifest = await self.manifest(source.dataset, source.version or "")
                files = usable(manifest.files)
                if not files:
                    raise Refused(f"data[{i}]: dataset {source.dataset} {manifest.version} has no file whose name "
                                  f"is at most {NAME_MAX} characters long: nothing to train on (R7)")
                dest = run_dir / DATASETS_DIR / str(i)
                loc = locate(manifest.location)
                if loc.kind == "local":
                    await asyncio.to_thread(link_local, Path(loc.path), files, dest, spec.account, roots)
                else:
                    if roots is not None:
                        check_s3(manifest.location, "dataset location", spec.account, roots)
                    await fetch_s3(self.storage, manifest.location, files, dest)
                data.append(DataSource(path=str(dest)))
            spec = msgspec.structs.replace(spec, data=data)
        return cmd if spec is cmd.spec else msgspec.structs.replace(cmd, spec=spec)
