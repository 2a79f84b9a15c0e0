"""Data in and out of a node: inputs staged through the agent's cache, outputs and logs uploaded.

The cache (``<agent workdir>/cache``) holds one read-only file per object version:

- an ``s3://`` object is keyed by (endpoint, bucket, key, ETag, size): a changed object has a new
  ETag, so a new entry, and an unchanged one is never downloaded twice;
- a local file (``TM_STAGE_LOCAL=copy``) by (path, size, modification time).

A node's input folder is made of hard links into the cache (same file system, no copy, no extra
space), so a second job on the same data downloads nothing.  Downloads run ``TM_STAGE_CONCURRENCY``
at a time; two nodes that need the same object at once download it once.  Progress goes to the
node's log as ``[trainmaster]`` lines.  Past ``TM_STAGE_CACHE_MAX_BYTES`` the oldest entries that
no run links any more are evicted.

Input files are hard links to the cache: they are read-only, and a script must not change them
(as root it could, and would change the cached copy for later jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.executor_agent.destinations import copy_outputs
from services.executor_agent.launch import Refused, Source
from trainmaster.safe_copy import CopyStats
from trainmaster.storage import ObjectInfo, Storage, StorageError
from trainmaster.storage_roots import Owner

Note = Callable[[str], None]
Allowed = Callable[[str], bool]
PROGRESS_EVERY_S = 1.0


class StagingFailed(Exception):
    def __init__(self, reason: str, exit_code: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class StageStats:
    files: int = 0
    bytes: int = 0
    hits: int = 0  # files found in the cache
    downloaded: int = 0  # files fetched now
    downloaded_bytes: int = 0

    def add(self, other: StageStats) -> None:
        for name in ("files", "bytes", "hits", "downloaded", "downloaded_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def cache_key(kind: str, *parts: object) -> str:
    """The cache entry of one object version (see the module's docstring for the parts)."""
    return hashlib.sha256("\0".join([kind, *map(str, parts)]).encode()).hexdigest()


def object_url(url: str, relative: str) -> str:
    return f"{url.rstrip('/')}/{relative}"


def list_local_versions(root: Path) -> list[ObjectInfo]:
    """Files under a local folder (or the file itself) with ``size:mtime_ns`` as their version."""
    if not root.exists():
        raise StorageError(f"{root} does not exist")
    if root.is_file():
        st = root.stat()
        return [ObjectInfo(root.name, st.st_size, f"{st.st_size}:{st.st_mtime_ns}")]
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            with contextlib.suppress(OSError):
                st = path.stat()
                out.append(ObjectInfo(path.relative_to(root).as_posix(), st.st_size, f"{st.st_size}:{st.st_mtime_ns}"))
    return sorted(out, key=lambda o: o.relative)


def _resolving_within(root: Path, infos: list[ObjectInfo], allowed: Allowed) -> list[ObjectInfo]:
    base = root if root.is_dir() else root.parent
    return [info for info in infos if allowed(os.path.realpath(base / info.relative))]


class DataCache:
    def __init__(self, root: Path, storage: Storage, *, endpoint: str | None, concurrency: int = 8,
                 max_bytes: int = 50 * 1024**3) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.storage = storage
        self.endpoint = endpoint or "aws"
        self.concurrency = concurrency
        self.max_bytes = max_bytes
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        self.totals = StageStats()  # since the agent started: for its log and the tests

    def path_of(self, key: str) -> Path:
        return self.objects / key[:2] / key

    def _key(self, source: Source, base: str, info: ObjectInfo) -> str:
        if source.local is not None:
            return cache_key("file", source.local / info.relative if source.local.is_dir() else source.local,
                             info.checksum)
        return cache_key("s3", self.endpoint, object_url(base, info.relative), info.checksum, info.size)

    async def stage(self, source: Source, note: Note, allowed: Allowed | None = None) -> StageStats:
        """Make ``source.host_path`` hold the source's files, downloading only what the cache lacks.
        ``allowed`` (a resolved path: may it be read?): the agent copies local files as itself, so
        a link in a local data folder that leads out of the job's storage roots is not followed."""
        where = f"data[{source.index}] {source.url}"
        base = source.url  # the folder the listed names are relative to
        try:
            if source.local is not None:
                infos = await asyncio.to_thread(list_local_versions, source.local)
                if allowed is not None:
                    kept = await asyncio.to_thread(_resolving_within, source.local, infos, allowed)
                    if len(kept) < len(infos):
                        note(f"staging {where}: {len(infos) - len(kept)} files skipped: symbolic links that lead "
                             "out of the storage roots")
                    infos = kept
            else:
                infos = await self.storage.list(source.url)
                if not infos and (single := await self.storage.stat(source.url)) is not None:
                    # the URL names one object, not a folder: stage that file
                    infos, base = [single], source.url.rstrip("/").rsplit("/", 1)[0]
        except StorageError as exc:
            raise StagingFailed(f"staging {where} failed: {exc}", 2 if "does not exist" in str(exc) else 1) from exc
        if source.local is None and not infos:
            raise StagingFailed(f"staging {where} failed: no objects under this prefix", 2)
        keys = {info.relative: self._key(source, base, info) for info in infos}
        stats = StageStats(files=len(infos), bytes=sum(i.size for i in infos))
        missing = [i for i in infos if not self.path_of(keys[i.relative]).exists()]
        stats.hits = stats.files - len(missing)
        note(f"staging {where}: {stats.files} files ({human_bytes(stats.bytes)}), {stats.hits} in the agent's "
             f"cache, {len(missing)} to download")
        if missing:
            await self._fetch(source, base, missing, keys, stats, note, allowed)
        await asyncio.to_thread(self._materialise, source.host_path, infos, keys)
        note(f"staged {where}: {stats.files} files ({human_bytes(stats.bytes)}); {stats.hits} from the cache, "
             f"{stats.downloaded} downloaded ({human_bytes(stats.downloaded_bytes)})")
        self.totals.add(stats)
        await asyncio.to_thread(self.evict)
        return stats

    async def _fetch(self, source: Source, base: str, missing: list[ObjectInfo], keys: dict[str, str],
                     stats: StageStats, note: Note, allowed: Allowed | None = None) -> None:
        # an object another node of this agent is downloading right now is waited for, not fetched twice
        waits = [self._in_flight[keys[i.relative]] for i in missing if keys[i.relative] in self._in_flight]
        mine = [i for i in missing if keys[i.relative] not in self._in_flight]
        loop = asyncio.get_running_loop()
        futures = {keys[i.relative]: loop.create_future() for i in mine}
        self._in_flight.update(futures)
        scratch = self.tmp / uuid.uuid4().hex
        last = [time.monotonic()]
        total_bytes = sum(i.size for i in mine)

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                note(f"downloading data[{source.index}]: {done}/{total} files ({human_bytes(total_bytes)} in all)")

        try:
            url = str(source.local) if source.local is not None else base
            if mine:
                # a local source that is one file is listed under its own name: copy from its folder
                if source.local is not None and source.local.is_file():
                    url = str(source.local.parent)
                await self.storage.download(url, scratch, files=mine, concurrency=self.concurrency, progress=progress,
                                            allowed=allowed)
                await asyncio.to_thread(self._adopt, scratch, mine, keys)
            stats.downloaded += len(mine)
            stats.downloaded_bytes += total_bytes
            for future in futures.values():
                future.set_result(None)
        except BaseException as exc:
            for future in futures.values():
                if not future.done():
                    future.set_exception(StagingFailed(f"staging data[{source.index}] failed: {exc}"))
                    future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            if isinstance(exc, StorageError):
                raise StagingFailed(f"staging data[{source.index}] {source.url} failed: {exc}") from exc
            raise
        finally:
            for key in futures:
                self._in_flight.pop(key, None)
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        for wait in waits:
            await wait

    def _adopt(self, scratch: Path, infos: list[ObjectInfo], keys: dict[str, str]) -> None:
        for info in infos:
            target = self.path_of(keys[info.relative])
            target.parent.mkdir(parents=True, exist_ok=True)
            source = scratch / info.relative
            source.chmod(0o444)
            os.replace(source, target)  # atomic: an entry is complete or absent

    def _materialise(self, folder: Path, infos: list[ObjectInfo], keys: dict[str, str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for info in infos:
            cached = self.path_of(keys[info.relative])
            target = folder / info.relative
            if not target.resolve().is_relative_to(folder.resolve()):
                raise StagingFailed(f"object {info.relative!r} would land outside the input folder", 2)
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            try:
                os.link(cached, target)
            except OSError:  # another file system (a cache moved elsewhere): a copy still works
                shutil.copyfile(cached, target)
            with contextlib.suppress(OSError):
                os.utime(cached, (now, now))  # recently used: evicted last

    def evict(self) -> int:
        """Remove the least recently used entries no run links any more, until the cache fits."""
        entries = []
        total = 0
        for path in self.objects.glob("*/*"):
            with contextlib.suppress(OSError):
                st = path.stat()
                total += st.st_size
                entries.append((st.st_mtime, st.st_nlink, st.st_size, path))
        removed = 0
        for _mtime, links, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if links > 1:  # a run's input folder still links it
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                removed += 1
        return removed


async def upload_outputs(storage: Storage, output_dir: Path, url: str | None, local: Path | None, owner: Owner,
                         roots: Sequence[str]) -> tuple[CopyStats, str | None]:
    """Copy the run's outputs to their location: a local folder (``local``: claimed for ``owner``
    under ``roots``) or s3://; never following links.  (what was copied, problem in words or None)."""
    if url is None:
        return CopyStats(), None
    try:
        if local is not None:
            return await asyncio.to_thread(copy_outputs, output_dir, local, owner, roots), None
        return await storage.upload_files(output_dir, url), None
    except Refused as exc:
        return CopyStats(), f"copying the outputs to {url} failed: {exc.reason}"
    except (StorageError, OSError) as exc:
        return CopyStats(), f"copying the outputs to {url} failed: {exc}"


async def upload_log(storage: Storage, log_file: Path, url: str) -> str | None:
    """Upload one node's log file into the s3:// log folder; the file stays where it is."""
    scratch = log_file.parent / f".upload-{uuid.uuid4().hex}"
    try:
        scratch.mkdir(parents=True)
        os.link(log_file, scratch / log_file.name)
        await storage.upload(scratch, url)
        return None
    except (StorageError, OSError) as exc:
        return f"uploading the log to {url} failed: {exc}"
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
