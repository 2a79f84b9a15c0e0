"""Copying a job's files without following symbolic links (blocking; run in a worker thread).

A job controls what its output folder holds, and a process it left behind may still change it
while the agent copies: every step here works on open directory descriptors (``openat`` with
``O_NOFOLLOW``), so a name cannot be swapped for a symbolic link between a check and its use.

- Symbolic links are skipped (counted), never followed: a link to ``/etc`` or to a file only
  root may read copies nothing.  So are special files (devices, fifos, sockets).
- A destination file is removed and created anew (``O_EXCL``), never written through: an
  existing name there cannot be a link or a hard link that leads elsewhere.
- Modes are kept without set-user-id, set-group-id and sticky bits.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a fifo put where a file was must not block the open
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1 << 20


@dataclass
class CopyStats:
    files: int = 0
    bytes: int = 0
    links: int = 0  # symbolic links skipped
    special: int = 0  # devices, fifos, sockets skipped

    def skipped(self) -> str | None:
        """What was left out, in words (None: nothing)."""
        parts = []
        if self.links:
            parts.append(f"{self.links} symbolic link{'s' if self.links != 1 else ''}")
        if self.special:
            parts.append(f"{self.special} special file{'s' if self.special != 1 else ''} (device, fifo, socket)")
        return " and ".join(parts) or None


@contextlib.contextmanager
def opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def open_dir(path: Path | str) -> int:
    """A folder the caller trusts the path of (the run folder, a storage root)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_beneath(dir_fd: int, relative: str, flags: int = READ_FLAGS) -> int:
    """``relative`` under ``dir_fd``, through folders only (no component may be a symbolic link)."""
    *folders, name = relative.split("/")
    fd = os.dup(dir_fd)
    try:
        for part in folders:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(name, flags, dir_fd=fd)
    finally:
        os.close(fd)


def regular_files(dir_fd: int, stats: CopyStats | None = None, prefix: str = "") -> list[tuple[str, int]]:
    """``(relative path, size)`` of every regular file under ``dir_fd``; links and special files are
    counted in ``stats``, not listed."""
    stats = stats if stats is not None else CopyStats()
    out: list[tuple[str, int]] = []
    for name, st in _entries(dir_fd):
        if stat.S_ISDIR(st.st_mode):
            with opened(os.open(name, DIR_FLAGS, dir_fd=dir_fd)) as child:
                out += regular_files(child, stats, f"{prefix}{name}/")
        elif stat.S_ISREG(st.st_mode):
            out.append((f"{prefix}{name}", st.st_size))
        else:
            _count_skipped(st, stats)
    return sorted(out)


def open_regular(dir_fd: int, relative: str) -> int | None:
    """A regular file under ``dir_fd`` opened for reading, or None when it is not one (any more)."""
    try:
        fd = open_beneath(dir_fd, relative)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return fd


def copy_tree(src_fd: int, dst_fd: int, skip: Callable[[str], bool] = lambda _name: False,
              stats: CopyStats | None = None) -> CopyStats:
    """Copy the regular files and folders under ``src_fd`` into ``dst_fd`` (merging into what is
    there); ``skip(name)`` leaves out top-level names."""
    stats = stats if stats is not None else CopyStats()
    for name, st in _entries(src_fd):
        if skip(name):
            continue
        if stat.S_ISDIR(st.st_mode):
            with opened(os.open(name, DIR_FLAGS, dir_fd=src_fd)) as child:
                made = _mkdir(name, dst_fd)
                with opened(os.open(name, DIR_FLAGS, dir_fd=dst_fd)) as dst_child:
                    if made:
                        os.fchmod(dst_child, stat.S_IMODE(st.st_mode) & 0o777 | 0o700)
                    copy_tree(child, dst_child, stats=stats)
        elif stat.S_ISREG(st.st_mode):
            copied = _copy_file(name, src_fd, dst_fd)
            if copied is None:
                stats.special += 1  # it changed into something else meanwhile
            else:
                stats.files += 1
                stats.bytes += copied
        else:
            _count_skipped(st, stats)
    return stats


def _entries(dir_fd: int) -> list[tuple[str, os.stat_result]]:
    out = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile
                out.append((entry.name, entry.stat(follow_symlinks=False)))
    return sorted(out)


def _count_skipped(st: os.stat_result, stats: CopyStats) -> None:
    if stat.S_ISLNK(st.st_mode):
        stats.links += 1
    else:
        stats.special += 1


def _mkdir(name: str, dst_fd: int) -> bool:
    try:
        os.mkdir(name, 0o700, dir_fd=dst_fd)
        return True
    except FileExistsError:
        return False


def _copy_file(name: str, src_fd: int, dst_fd: int) -> int | None:
    try:
        src = os.open(name, READ_FLAGS, dir_fd=src_fd)
    except OSError:  # became a link, or went away
        return None
    with opened(src):
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            return None
        os.set_blocking(src, True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dst_fd)  # a folder there raises: not ours to replace
        with opened(os.open(name, CREATE_FLAGS, 0o600, dir_fd=dst_fd)) as dst:
            copied = _copy_bytes(src, dst)
            os.fchmod(dst, stat.S_IMODE(st.st_mode) & 0o777)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        return copied


def _copy_bytes(src: int, dst: int) -> int:
    """Everything from ``src`` into ``dst``: in the kernel (sendfile), or read and written."""
    copied = 0
    try:
        while sent := os.sendfile(dst, src, None, CHUNK * 64):
            copied += sent
        return copied
    except OSError:
        if copied:
            raise
    while chunk := os.read(src, CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
        copied += len(chunk)
    return copied
