"""The datasets registry (R1, R10) on ``tm.datasets.<verb>``, answered by job-intake.

A dataset is a name over a storage location (a local folder or ``s3://bucket/prefix``).  Publishing
snapshots the location as the next version (V001, V002, ...): the manifest of its files (path,
size, checksum: the MD5 of a local file, the S3 ETag) is written once with KV *create* and never
changed, so a job that names dataset+version trains on exactly those files, whatever happened to
the folder since (the agent stages the manifest's files and checks them).

A dataset belongs to a project (``project``, an account): its viewers list and read it, its
members create and publish it, and only that project's jobs train on it (the validator checks).
One the caller does not view is answered as missing.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import time

import msgspec
import structlog
from faststream.nats import NatsMessage
from nats.js.kv import KeyValue

from services.job_intake.core import next_dataset_version, with_listed_version
from services.job_intake.policy import only_visible, visible
from services.job_intake.replies import Refused, not_found, refused
from trainmaster import kvstore
from trainmaster.access import Caller, Role, require
from trainmaster.decoding import decode_as, decode_empty
from trainmaster.identity import Directory
from trainmaster.locations import locate
from trainmaster.messages import (
    Dataset,
    DatasetCreate,
    DatasetList,
    DatasetPublish,
    DatasetVersion,
    DatasetVersionRef,
    ManifestFile,
    NameRef,
    Violation,
    encode,
)
from trainmaster.storage import Storage, StorageError

log = structlog.get_logger()
_decode_dataset = msgspec.json.Decoder(Dataset).decode
_decode_version = msgspec.json.Decoder(DatasetVersion).decode

# a manifest is one KV value: it must stay under the server's max_payload (1 MiB by default)
MAX_MANIFEST_BYTES = 900 * 1024
# version numbers a publish tries before it gives up: each one it loses was taken by another
# publish of the same dataset at that moment, far more than ever publish at once
PUBLISH_ATTEMPTS = 50


def _bad_location(code: str, message: str) -> Refused:
    return refused("invalid_request", f"location: {message}", [Violation("location", code, message)])


class Datasets:
    def __init__(self, datasets: KeyValue, versions: KeyValue, storage: Storage, max_bytes: int,
                 directory: Directory) -> None:
        self.kv = datasets
        self.directory = directory
        self.versions = versions
        self.storage = storage
        self.max_bytes = max_bytes

    async def find(self, name: str) -> kvstore.Stored[Dataset] | None:
        return await kvstore.read(self.kv, name, _decode_dataset)

    async def project_of(self, name: str) -> str | None:
        found = await self.find(name) if name else None
        return found.value.project if found is not None else None

    async def find_version(self, name: str, version: str) -> DatasetVersion | None:
        found = await kvstore.read(self.versions, f"{name}.{version}", _decode_version)
        return found.value if found is not None else None

    async def _location(self, raw: str) -> str:
        """The location as stored (a local path or an s3:// URL)."""
        loc = locate(raw.strip())
        if loc.kind == "local":
            path = posixpath.normpath(loc.path)
            if not await asyncio.to_thread(os.path.isdir, path):
                raise _bad_location("location_not_found", f"{path} is not an existing folder")
            return path
        if loc.kind == "remote" and loc.path == "s3":
            try:
                await self.storage.list(raw.strip())
            except StorageError as exc:
                raise _bad_location("location_not_readable", str(exc)) from exc
            return raw.strip().rstrip("/")
        raise _bad_location("invalid_location",
                            f"{raw!r} is not a dataset location: give an absolute local folder or s3://bucket/prefix")

    # ---- handlers
    async def on_create(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        request = decode_as(msg.body, DatasetCreate, self.max_bytes)
        # before the location is looked at: a refused caller learns nothing of the storage
        require(caller, request.project, Role.MEMBER, "creating a dataset", "project")
        location = await self._location(request.location)
        now = time.time()
        dataset = Dataset(name=request.name, location=location, created_at=now, updated_at=now,
                          description=request.description, project=request.project)
        if await kvstore.create(self.kv, request.name, encode(dataset)) is None:
            raise refused("conflict", f"dataset {request.name} exists already",
                          [Violation("name", "exists", "choose another name, or publish a new version of it")])
        log.info("dataset created", dataset=request.name, location=location, project=request.project)
        return encode(dataset)

    async def on_list(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        decode_empty(msg.body, self.max_bytes)
        every = [_decode_dataset(v) for v in await kvstore.values(self.kv)]
        return encode(DatasetList(datasets=only_visible(caller, every, lambda d: d.project)))

    async def on_get(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        ref = decode_as(msg.body, NameRef, self.max_bytes)
        found = await self.find(ref.name)
        if found is None or not visible(caller, found.value.project):
            raise not_found("dataset", ref.name, "list them: trainmaster dataset list")
        return encode(found.value)

    async def on_version(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        ref = decode_as(msg.body, DatasetVersionRef, self.max_bytes)
        dataset = await self.find(ref.name)
        version = await self.find_version(ref.name, ref.version)
        if version is None or dataset is None or not visible(caller, dataset.value.project):
            raise not_found("dataset version", f"{ref.name} {ref.version}",
                            f"list the versions: trainmaster dataset show {ref.name}")
        return encode(version)

    async def on_publish(self, msg: NatsMessage) -> bytes:
        caller = self.directory.caller(msg.headers)
        request = decode_as(msg.body, DatasetPublish, self.max_bytes)
        dataset = await self._dataset(request.name, caller)
        require(caller, dataset.project, Role.MEMBER, "publishing a dataset", "name")
        try:
            listing = await self.storage.list(dataset.location, checksums=True)
        except StorageError as exc:
            raise refused("invalid_request", f"cannot read dataset {dataset.name}: {exc}",
                          [Violation("location", "location_not_readable", str(exc))]) from exc
        if not listing:
            raise refused("invalid_request", f"{dataset.location} holds no file to publish",
                          [Violation("location", "empty_location", "put the data files there first")])
        files = [ManifestFile(f.relative, f.size, f.checksum) for f in listing]
        return await self._publish(dataset.name, files, request.description)

    async def _dataset(self, name: str, caller: Caller | None = None) -> Dataset:
        """The dataset (for ``caller``: if it views its project), else the reply to a missing one."""
        found = await self.find(name)
        if found is None or (caller is not None and not visible(caller, found.value.project)):
            raise not_found("dataset", name, "create it first: trainmaster dataset create")
        return found.value

    async def _publish(self, name: str, files: list[ManifestFile], description: str) -> bytes:
        """Write the manifest as the next version (KV create: immutable), then list it on the dataset
        (compare-and-set).  A concurrent publish takes the next number; a half-done one is repaired."""
        for _ in range(PUBLISH_ATTEMPTS):
            dataset = await self._dataset(name)
            manifest = DatasetVersion(dataset=name, version=next_dataset_version(dataset), location=dataset.location,
                                      created_at=time.time(), files=files, total_bytes=sum(f.size for f in files),
                                      description=description)
            body = encode(manifest)
            if len(body) > MAX_MANIFEST_BYTES:
                raise refused("invalid_request", f"the manifest of {len(files)} files is {len(body)} bytes; "
                              f"at most {MAX_MANIFEST_BYTES} fit", [Violation(
                                  "location", "manifest_too_large", "split the data into several datasets")])
            if await kvstore.create(self.versions, f"{name}.{manifest.version}", body) is None:
                # that number is taken (a concurrent publish, or one that stopped half-way): record it, go on
                taken = await self.find_version(name, manifest.version)
                if taken is not None:
                    await self._list_version(name, taken)
                continue
            await self._list_version(name, manifest)
            log.info("dataset version published", dataset=name, version=manifest.version, files=len(files))
            return encode(manifest)
        raise refused("conflict", f"dataset {name}: {PUBLISH_ATTEMPTS} version numbers in a row were taken by "
                      "other publishes meanwhile; publish again", [Violation(
                          "name", "conflict", "other publishes of this dataset are running: try again")])

    async def _list_version(self, name: str, version: DatasetVersion) -> None:
        now = time.time()

        def decide(current: Dataset | None) -> Dataset | None:
            if current is None:
                raise not_found("dataset", name, "create it first: trainmaster dataset create")
            return with_listed_version(current, version, now)

        await kvstore.change(self.kv, name, decide, decode=_decode_dataset)
