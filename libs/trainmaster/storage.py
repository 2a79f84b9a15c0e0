"""Object storage: local paths and ``s3://bucket/prefix`` (S3-compatible through aioboto3: AWS,
OBS, MinIO, moto), behind one small async interface.

Endpoint and credentials come from settings (``TM_S3_ENDPOINT_URL``, ``TM_S3_ACCESS_KEY_ID``,
``TM_S3_SECRET_ACCESS_KEY``; when unset, the usual ``AWS_*`` variables and files apply).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from trainmaster import safe_copy
from trainmaster.locations import locate
from trainmaster.safe_copy import CopyStats
from trainmaster.settings import Settings


class StorageError(Exception):
    """A storage location could not be read or written; the message says which and why."""


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # no leading slash; "" for the whole bucket

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, relative: str) -> str:
        base = self.prefix.rstrip("/")
        return f"{base}/{relative}" if base else relative


def parse_s3(url: str) -> S3Url:
    if not url.lower().startswith("s3://"):
        raise StorageError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise StorageError(f"{url!r} names no bucket: use s3://bucket/prefix")
    return S3Url(bucket, prefix)


@dataclass(frozen=True)
class ObjectInfo:
    """One file under a location: its path relative to the location, size and checksum
    (S3 ETag, or the MD5 of a local file when asked for)."""

    relative: str
    size: int
    checksum: str | None = None


Progress = Callable[[int, int], None]  # (files done, files total)


class Storage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session = aioboto3.Session()

    def _client(self):
        s = self.settings
        return self._session.client(
            "s3",
            endpoint_url=s.storage.s3_endpoint_url,
            region_name=s.storage.region,
            aws_access_key_id=s.storage.s3_access_key_id,
            aws_secret_access_key=(s.storage.s3_secret_access_key.get_secret_value()
                                   if s.storage.s3_secret_access_key else None),
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60),
        )

    # ------------------------------------------------------------------ reading
    async def list(self, url: str, checksums: bool = False) -> list[ObjectInfo]:
        """Every file under a location (recursively), sorted by relative path."""
        loc = locate(url)
        if loc.kind == "local":
            return await asyncio.to_thread(_list_local, Path(loc.path), checksums)
        s3 = parse_s3(url)
        out: list[ObjectInfo] = []
        prefix = s3.prefix if not s3.prefix or s3.prefix.endswith("/") else s3.prefix + "/"
        try:
            async with self._client() as client:
                paginator = client.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=s3.bucket, Prefix=prefix):
                    for obj in page.get("Contents", []):
                        rel = obj["Key"][len(prefix):]
                        if rel and not rel.endswith("/"):
                            out.append(ObjectInfo(rel, obj["Size"], obj.get("ETag", "").strip('"') or None))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot list {url}: {_why(exc)}") from exc
        return sorted(out, key=lambda o: o.relative)

    async def stat(self, url: str) -> ObjectInfo | None:
        """The one object at exactly ``url`` (``s3://bucket/key``), or None when there is none."""
        s3 = parse_s3(url)
        if not s3.prefix:
            return None
        try:
            async with self._client() as client:
                head = await client.head_object(Bucket=s3.bucket, Key=s3.prefix)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"cannot read {url}: {_why(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {url}: {_why(exc)}") from exc
        return ObjectInfo(s3.prefix.rsplit("/", 1)[-1], head["ContentLength"], head.get("ETag", "").strip('"') or None)

    async def bucket_region(self, url: str) -> str:
        s3 = parse_s3(url)
        try:
            async with self._client() as client:
                answer = await client.get_bucket_location(Bucket=s3.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read bucket {s3.bucket}: {_why(exc)}") from exc
        # S3 answers None for us-east-1, the region that predates location constraints
        return answer.get("LocationConstraint") or "us-east-1"

    # ------------------------------------------------------------------ copying
    async def download(self, url: str, dest: Path, files: list[ObjectInfo] | None = None,
                       concurrency: int = 8, progress: Progress | None = None,
                       allowed: Callable[[str], bool] | None = None) -> list[Path]:
        """Copy every file under ``url`` (or just ``files``) into ``dest``, ``concurrency`` at a time.
        ``allowed``: for a local ``url``, whether the file a name resolves to may be read (checked on
        the open file, so a link swapped in meanwhile does not get through)."""
        files = files if files is not None else await self.list(url)
        targets = {f.relative: _inside(dest, f.relative) for f in files}
        await asyncio.to_thread(_make_parents, [dest, *(t.parent for t in targets.values())])
        loc = locate(url)
        done = 0
        sem = asyncio.Semaphore(concurrency)

        async def one(client, info: ObjectInfo) -> Path:
            nonlocal done
            target = targets[info.relative]
            async with sem:
                if loc.kind == "local":
                    await asyncio.to_thread(_copy_file, Path(loc.path) / info.relative, target, allowed)
                else:
                    s3 = parse_s3(url)
                    await client.download_file(s3.bucket, s3.key(info.relative), str(target))
            done += 1
            if progress:
                progress(done, len(files))
            return target

        try:
            if loc.kind == "local":
                return list(await asyncio.gather(*(one(None, f) for f in files)))
            async with self._client() as client:
                return list(await asyncio.gather(*(one(client, f) for f in files)))
        except (ClientError, BotoCoreError, OSError) as exc:
            raise StorageError(f"cannot download {url}: {_why(exc)}") from exc

    async def upload(self, src: Path, url: str, concurrency: int = 8) -> int:
        """Copy every file under the folder ``src`` to ``url``; returns the number of files."""
        return (await self.upload_files(src, url, concurrency)).files

    async def upload_files(self, src: Path, url: str, concurrency: int = 8) -> CopyStats:
        """``upload``, saying also what was left out: symbolic links and special files under ``src``
        are never followed nor copied (``safe_copy``)."""
        loc = locate(url)
        if loc.kind == "local":
            return await asyncio.to_thread(_copy_tree, src, Path(loc.path))
        s3 = parse_s3(url)
        stats = CopyStats()
        sem = asyncio.Semaphore(concurrency)
        src_fd = await asyncio.to_thread(safe_copy.open_dir, src)
        try:
            files = await asyncio.to_thread(safe_copy.regular_files, src_fd, stats)
            async with self._client() as client:
                async def one(relative: str) -> None:
                    async with sem:
                        fd = await asyncio.to_thread(safe_copy.open_regular, src_fd, relative)
                        if fd is None:  # it changed into a link or a special file meanwhile
                            stats.special += 1
                            return
                        try:
                            await client.upload_fileobj(_ThreadReader(fd), s3.bucket, s3.key(relative))
                        finally:
                            os.close(fd)
                        stats.files += 1

                await asyncio.gather(*(one(relative) for relative, _size in files))
                stats.bytes = sum(size for _relative, size in files)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise StorageError(f"cannot upload to {url}: {_why(exc)}") from exc
        finally:
            os.close(src_fd)
        return stats


class _ThreadReader:
    """A file descriptor read in a worker thread: a big output must not stall the event loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = os.fstat(self.fd).st_size
        return await asyncio.to_thread(os.read, self.fd, size)


def _why(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def _inside(root: Path, relative: str) -> Path:
    """``root/relative``, refusing keys that would escape ``root`` (``../`` in an object key)."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise StorageError(f"object {relative!r} would land outside {root}")
    return target


def _list_local(root: Path, checksums: bool) -> list[ObjectInfo]:
    if not root.exists():
        raise StorageError(f"{root} does not exist")
    if root.is_file():
        return [ObjectInfo(root.name, root.stat().st_size, _md5(root) if checksums else None)]
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file():
                rel = path.relative_to(root).as_posix()
                out.append(ObjectInfo(rel, path.stat().st_size, _md5(path) if checksums else None))
    return sorted(out, key=lambda o: o.relative)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _make_parents(folders: list[Path]) -> None:
    for folder in set(folders):
        folder.mkdir(parents=True, exist_ok=True)


def _copy_file(src: Path, dst: Path, allowed: Callable[[str], bool] | None = None) -> None:
    import shutil

    if allowed is None:
        shutil.copyfile(src, dst)
        return
    with src.open("rb") as reader:
        # the file actually opened, whatever links led to it
        real = os.readlink(f"/proc/self/fd/{reader.fileno()}")
        if not allowed(real):
            raise StorageError(f"{src} resolves to {real}, outside the storage roots")
        with dst.open("wb") as writer:
            shutil.copyfileobj(reader, writer)


def _copy_tree(src: Path, dst: Path) -> CopyStats:
    dst.mkdir(parents=True, exist_ok=True)
    with safe_copy.opened(safe_copy.open_dir(src)) as src_fd, safe_copy.opened(safe_copy.open_dir(dst)) as dst_fd:
        return safe_copy.copy_tree(src_fd, dst_fd)
