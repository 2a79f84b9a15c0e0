"""The datasets registry (R1, R10) on ``tm.datasets.<verb>``, answered by job-intake.

A dataset is a name over a storage location (a local folder or ``s3://bucket/prefix``).  Publishing
snapshots the location as the next version (V001, V002, ...): the manifest of its files (path,
size, checksum: the MD5 of a local file, the S3 ETag) is written once with KV *create* and never
changed, so a job that names dataset+version trains on exactly those files, whatever happened to
the folder since (the agent stages the manifest's files and checks them).
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import time

import msgspec
import structlog
from faststream.nats import NatsMessage
from nats.js.errors import InvalidKeyError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.job_intake.core import RequestError, decode_as, format_version
from services.job_intake.registry import _entries, not_found
from trainmaster.bus import error_reply, responder
from trainmaster.decoding import decode_empty
from trainmaster.locations import locate
from trainmaster.messages import (
    Dataset,
    DatasetCreate,
    DatasetList,
    DatasetPublish,
    DatasetVersion,
    DatasetVersionInfo,
    DatasetVersionRef,
    ManifestFile,
    NameRef,
    Violation,
    encode,
)
from trainmaster.service import ServiceContext
from trainmaster.storage import Storage, StorageError

log = structlog.get_logger()
_decode_dataset = msgspec.json.Decoder(Dataset).decode
_decode_version = msgspec.json.Decoder(DatasetVersion).decode

# a manifest is one KV value: it must stay under the server's max_payload (1 MiB by default)
MAX_MANIFEST_BYTES = 900 * 1024


def _bad(field: str, code: str, message: str) -> bytes:
    return error_reply("invalid_request", f"{field}: {message}", [Violation(field, code, message)])


class Datasets:
    def __init__(self, datasets: KeyValue, versions: KeyValue, storage: Storage, max_bytes: int) -> None:
        self.kv = datasets
        self.versions = versions
        self.storage = storage
        self.max_bytes = max_bytes

    async def find(self, name: str) -> tuple[Dataset, int] | None:
        try:
            entry = await self.kv.get(name)
        except (KeyNotFoundError, InvalidKeyError):
            return None
        return (_decode_dataset(entry.value), entry.revision or 0) if entry.value else None

    async def find_version(self, name: str, version: str) -> DatasetVersion | None:
        try:
            entry = await self.versions.get(f"{name}.{version}")
        except (KeyNotFoundError, InvalidKeyError):
            return None
        return _decode_version(entry.value) if entry.value else None

    async def _location(self, raw: str) -> str | bytes:
        """The location as stored (a local path or an s3:// URL), or an error reply."""
        loc = locate(raw.strip())
        if loc.kind == "local":
            path = posixpath.normpath(loc.path)
            if not await asyncio.to_thread(os.path.isdir, path):
                return _bad("location", "location_not_found", f"{path} is not an existing folder")
            return path
        if loc.kind == "remote" and loc.path == "s3":
            try:
                await self.storage.list(raw.strip())
            except StorageError as exc:
                return _bad("location", "location_not_readable", str(exc))
            return raw.strip().rstrip("/")
        return _bad("location", "invalid_location",
                    f"{raw!r} is not a dataset location: give an absolute local folder or s3://bucket/prefix")

    # ---- handlers
    async def on_create(self, msg: NatsMessage) -> bytes:
        try:
            request = decode_as(msg.body, DatasetCreate, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        location = await self._location(request.location)
        if isinstance(location, bytes):
            return location
        now = time.time()
        dataset = Dataset(name=request.name, location=location, created_at=now, updated_at=now,
                          description=request.description)
        try:
            await self.kv.create(request.name, encode(dataset))
        except KeyWrongLastSequenceError:
            return error_reply("conflict", f"dataset {request.name} exists already",
                               [Violation("name", "exists", "choose another name, or publish a new version of it")])
        log.info("dataset created", dataset=request.name, location=location)
        return encode(dataset)

    async def on_list(self, msg: NatsMessage) -> bytes:
        try:
            decode_empty(msg.body, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        return encode(DatasetList(datasets=[_decode_dataset(v) for v in await _entries(self.kv)]))

    async def on_get(self, msg: NatsMessage) -> bytes:
        try:
            ref = decode_as(msg.body, NameRef, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        found = await self.find(ref.name)
        return encode(found[0]) if found else not_found("dataset", ref.name, "list them: trainmaster dataset list")

    async def on_version(self, msg: NatsMessage) -> bytes:
        try:
            ref = decode_as(msg.body, DatasetVersionRef, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        version = await self.find_version(ref.name, ref.version)
        if version is None:
            return not_found("dataset version", f"{ref.name} {ref.version}",
                             f"list the versions: trainmaster dataset show {ref.name}")
        return encode(version)

    async def on_publish(self, msg: NatsMessage) -> bytes:
        try:
            request = decode_as(msg.body, DatasetPublish, self.max_bytes)
        except RequestError as err:
            return error_reply(err.body.code, err.body.message, err.body.details)
        found = await self.find(request.name)
        if found is None:
            return not_found("dataset", request.name, "create it first: trainmaster dataset create")
        dataset = found[0]
        try:
            listing = await self.storage.list(dataset.location, checksums=True)
        except StorageError as exc:
            return error_reply("invalid_request", f"cannot read dataset {dataset.name}: {exc}",
                               [Violation("location", "location_not_readable", str(exc))])
        if not listing:
            return error_reply("invalid_request", f"{dataset.location} holds no file to publish",
                               [Violation("location", "empty_location", "put the data files there first")])
        files = [ManifestFile(f.relative, f.size, f.checksum) for f in listing]
        return await self._publish(dataset.name, files, request.description)

    async def _publish(self, name: str, files: list[ManifestFile], description: str) -> bytes:
        """Write the manifest as the next version (KV create: immutable), then list it on the dataset
        (compare-and-set).  A concurrent publish takes the next number; a half-done one is repaired."""
        while True:
            found = await self.find(name)
            assert found is not None
            dataset = found[0]
            number = max((int(v.version[1:]) for v in dataset.versions), default=0) + 1
            now = time.time()
            manifest = DatasetVersion(dataset=name, version=format_version(number), location=dataset.location,
                                      created_at=now, files=files, total_bytes=sum(f.size for f in files),
                                      description=description)
            body = encode(manifest)
            if len(body) > MAX_MANIFEST_BYTES:
                return error_reply("invalid_request", f"the manifest of {len(files)} files is {len(body)} bytes; "
                                   f"at most {MAX_MANIFEST_BYTES} fit", [Violation(
                                       "location", "manifest_too_large", "split the data into several datasets")])
            try:
                await self.versions.create(f"{name}.{manifest.version}", body)
            except KeyWrongLastSequenceError:
                # that number is taken (a concurrent publish, or one that stopped half-way): record it, go on
                taken = await self.find_version(name, manifest.version)
                if taken is not None:
                    await self._list_version(name, taken)
                continue
            await self._list_version(name, manifest)
            log.info("dataset version published", dataset=name, version=manifest.version, files=len(files))
            return encode(manifest)

    async def _list_version(self, name: str, version: DatasetVersion) -> None:
        info = DatasetVersionInfo(version=version.version, created_at=version.created_at, files=len(version.files),
                                  bytes=version.total_bytes, description=version.description)
        while True:
            found = await self.find(name)
            assert found is not None
            dataset, revision = found
            if any(v.version == info.version for v in dataset.versions):
                return
            versions = sorted([*dataset.versions, info], key=lambda v: int(v.version[1:]))
            updated = msgspec.structs.replace(dataset, versions=versions, updated_at=time.time())
            try:
                await self.kv.update(name, encode(updated), last=revision)
                return
            except KeyWrongLastSequenceError:
                continue


def serve(ctx: ServiceContext, datasets: Datasets) -> None:
    for verb in ("create", "list", "get", "publish", "version"):
        responder(ctx.broker, ctx.topo.datasets(verb), "job-intake", getattr(datasets, f"on_{verb}"))
