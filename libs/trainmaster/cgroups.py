"""One cgroup per node: the flavor's CPUs, memory and a process limit, and a kill that nothing the
node started escapes (``setsid``, a double fork).  cgroup v2 first, v1 (per-controller hierarchies,
e.g. a hybrid host) where the controllers are bound there; the same interface for both.

Where the groups go (``agent_base`` + ``node_dirs``)::

    v2:  <mount>/<agent's group>/tm-agent                      the agent itself (moved there)
         <mount>/<agent's group>/trainmaster/<tree>/<job>-a<attempt>-n<node>
    v1:  <mount of each controller>/<agent's group in it>/trainmaster/<tree>/<job>-a<attempt>-n<node>

``<tree>`` is ``<agent_id>-<hash of its work folder>``: an agent started again over the same folder
finds (and clears) the groups of its previous life, and two agents that share an id on one host
(a mistake, or two test runs) never touch each other's.

Under the agent's own group, not the root: whatever bounds the agent (a systemd slice, a sandbox)
bounds its nodes too, and on v2 an unprivileged delegation only allows writing there.  On v2 a group
that holds processes cannot hand controllers to children (the "no internal processes" rule), so
the agent first moves itself into the leaf ``tm-agent``; an agent started again inside that leaf
uses its parent.  v1 has no such rule: the agent stays where it is.

The node's process joins its group in the pre-exec of its spawn (``join``): before ``exec`` and
before it can fork, so no child is ever born outside it, and while the child is still root (a
later pre-exec step may drop to the job's user).  Writing ``0`` moves the writer itself (v1
``tasks``, v2 ``cgroup.procs``; see ``NodeGroup.join_files``).

The parsing of ``/proc`` and the paths, limits and file contents are pure functions; ``CgroupHost``
and ``NodeGroup`` do the writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("cpu", "memory", "pids")
FREEZER = "freezer"  # v1 only: stops a group's processes while they are killed
AGENT_LEAF = "tm-agent"  # v2: the leaf the agent moves itself into
CPU_PERIOD_US = 100_000
KILL_ROUNDS = 200  # at 10 ms a round: a group that does not empty in 2 s is reported, not waited on


class CgroupsUnavailable(Exception):
    """This host (or this agent's place in it) offers no usable cgroups; ``str`` says why."""


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy: where it is mounted, and the agent's own group in it (relative)."""

    mount: Path
    own: str  # "" = the hierarchy's root


@dataclass(frozen=True)
class Layout:
    version: int  # 1 or 2
    hierarchies: dict[str, Hierarchy]  # controller -> its hierarchy (v2: the one, for each)


@dataclass(frozen=True)
class Limits:
    cpu_quota_us: int | None  # None: no CPU limit
    memory_bytes: int | None
    pids_max: int
    cpu_period_us: int = CPU_PERIOD_US


@dataclass(frozen=True)
class Write:
    """One value into one file of a group; ``optional``: skipped where the kernel lacks the file
    (v1 ``memory.memsw.*`` without swap accounting, v2 ``memory.swap.max`` without swap)."""

    controller: str
    file: str
    value: str
    optional: bool = False


# ------------------------------------------------------------------------------ pure: reading /proc
def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup``: controller -> group path without its leading "/" (v2: key "")."""
    groups: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].strip().lstrip("/")
        if parts[1] == "":
            groups[""] = path
        for controller in parts[1].split(","):
            if controller:
                groups[controller] = path
    return groups


def parse_mountinfo(text: str) -> list[tuple[str, Path, str, frozenset[str]]]:
    """Cgroup mounts in ``/proc/self/mountinfo``: (fs type, mount point, root, super options)."""
    mounts: list[tuple[str, Path, str, frozenset[str]]] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((tail[0], Path(fields[4].replace("\\040", " ")), fields[3], frozenset(tail[2].split(","))))
    return mounts


def relative_to_root(group: str, root: str) -> str:
    """The group's path inside a mount of ``root`` (a bind mount of a subtree shows only that)."""
    root = root.strip("/")
    if root and (group == root or group.startswith(root + "/")):
        return group[len(root):].lstrip("/")
    return group


def detect_layout(mountinfo: str, proc_cgroup: str, read_controllers: Callable[[Path], str]) -> Layout:
    """v2 if its mount offers cpu, memory and pids to the agent's group (``read_controllers`` reads a
    ``cgroup.controllers`` file), else v1 if each has a hierarchy of its own; else
    ``CgroupsUnavailable``."""
    mounts = parse_mountinfo(mountinfo)
    own = parse_proc_cgroup(proc_cgroup)
    reasons: list[str] = []
    for fstype, point, root, _options in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        group = relative_to_root(own[""], root)
        try:
            offered = set(read_controllers(point / group / "cgroup.controllers").split())
        except OSError as exc:
            reasons.append(f"cgroup v2 at {point}: {exc.strerror or exc}")
            continue
        if missing := [c for c in CONTROLLERS if c not in offered]:
            reasons.append(f"cgroup v2 at {point} lacks {', '.join(missing)} for the agent's group")
            continue
        hierarchy = Hierarchy(point, group)
        return Layout(2, dict.fromkeys(CONTROLLERS, hierarchy))
    v1: dict[str, Hierarchy] = {}
    for fstype, point, root, options in mounts:
        if fstype != "cgroup":
            continue
        for controller in (*CONTROLLERS, FREEZER):
            if controller in options and controller not in v1 and controller in own:
                v1[controller] = Hierarchy(point, relative_to_root(own[controller], root))
    if missing := [c for c in CONTROLLERS if c not in v1]:
        if v1 or not reasons:
            reasons.append(f"no cgroup v1 hierarchy for {', '.join(missing)}")
        raise CgroupsUnavailable("; ".join(reasons))
    return Layout(1, v1)


# ------------------------------------------------------------------------------ pure: paths and limits
def agent_base(hierarchy: Hierarchy, version: int) -> tuple[str, str | None]:
    """(the group the agent's tree hangs from, the leaf the agent must move into or None)."""
    own = hierarchy.own
    if version == 1 or not own:  # v1, or v2's root, which may hold processes and hand down controllers
        return own, None
    parent, _, leaf = own.rpartition("/")
    if leaf == AGENT_LEAF:  # started again inside the leaf of an earlier life
        return parent, None
    return own, f"{own}/{AGENT_LEAF}".lstrip("/")


def agent_tree(layout: Layout, tree: str) -> dict[str, Path]:
    """controller -> the folder of this agent's node groups (``.../trainmaster/<tree>``)."""
    return {controller: h.mount / agent_base(h, layout.version)[0] / "trainmaster" / tree
            for controller, h in layout.hierarchies.items()}


def tree_name(agent_id: str, workdir: Path) -> str:
    return f"{agent_id}-{hashlib.sha256(os.fsencode(workdir)).hexdigest()[:8]}"


def node_name(job_id: str, attempt: int, node: int) -> str:
    return f"{job_id}-a{attempt}-n{node}"


def node_dirs(layout: Layout, tree: str, name: str) -> dict[str, Path]:
    return {controller: folder / name for controller, folder in agent_tree(layout, tree).items()}


def node_limits(cpus: float | None, memory_mb: int | None, pids_max: int,
                  period_us: int = CPU_PERIOD_US) -> Limits:
    """A flavor's CPUs as a CFS quota (2 CPUs = twice the period each period), its memory in bytes."""
    quota = max(1000, round(cpus * period_us)) if cpus else None
    memory = memory_mb * 1024 * 1024 if memory_mb else None
    return Limits(quota, memory, pids_max, period_us)


def limit_writes(version: int, limits: Limits) -> list[Write]:
    """The files that set ``limits``, in the order they must be written."""
    if version == 2:
        cpu = f"{limits.cpu_quota_us if limits.cpu_quota_us else 'max'} {limits.cpu_period_us}"
        writes = [Write("cpu", "cpu.max", cpu), Write("pids", "pids.max", str(limits.pids_max))]
        if limits.memory_bytes:
            writes += [Write("memory", "memory.max", str(limits.memory_bytes)),
                       Write("memory", "memory.swap.max", "0", optional=True)]
        return writes
    writes = [Write("cpu", "cpu.cfs_period_us", str(limits.cpu_period_us)),
              Write("cpu", "cpu.cfs_quota_us", str(limits.cpu_quota_us or -1)),
              Write("pids", "pids.max", str(limits.pids_max))]
    if limits.memory_bytes:
        # memory+swap may never be below memory: the plain limit first; equal = no swap at all
        writes += [Write("memory", "memory.limit_in_bytes", str(limits.memory_bytes)),
                   Write("memory", "memory.memsw.limit_in_bytes", str(limits.memory_bytes), optional=True)]
    return writes


def subtree_controls(layout: Layout, tree: str) -> list[Path]:
    """v2: the ``cgroup.subtree_control`` files that must offer cpu, memory and pids, top down."""
    if layout.version != 2:
        return []
    h = layout.hierarchies["cpu"]
    base = h.mount / agent_base(h, 2)[0]
    return [base / "cgroup.subtree_control", base / "trainmaster" / "cgroup.subtree_control",
            base / "trainmaster" / tree / "cgroup.subtree_control"]


def oom_kills(version: int, text: str) -> int | None:
    """OOM kills in a group: v2 ``memory.events``, v1 ``memory.oom_control`` (its ``oom_kill``
    line, Linux 4.13+).  None: the file does not say."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None if version == 1 else 0


def oom_reason(memory_bytes: int) -> str:
    return f"out of memory: the node used its flavor's {memory_bytes / 1024**3:g} GiB (memory.max)"


def parse_pids(text: str) -> list[int]:
    return [int(word) for word in text.split() if word.isdigit()]


# ------------------------------------------------------------------------------ writes
def _write(path: Path, value: str) -> None:
    # a group's files are the kernel's (O_CREAT changes nothing there); in a plain folder tree
    # standing in for cgroupfs they are made by the write
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def join_preexec(files: list[str]) -> Callable[[], None]:
    """A pre-exec step that moves the child into its groups.  Plain ``os`` calls only: it runs
    between fork and exec in a copy of a threaded process."""
    encoded = [os.fsencode(path) for path in files]

    def join() -> None:
        for path in encoded:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
    return join


class NodeGroup:
    """One node's group (one folder per hierarchy on v1)."""

    def __init__(self, version: int, dirs: dict[str, Path], limits: Limits) -> None:
        self.version = version
        self.dirs = dirs
        self.limits = limits

    @property
    def folders(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    @property
    def join_files(self) -> list[str]:
        """Where the child writes ``0`` to join.  v1: ``tasks`` (this one thread, which is all of a
        freshly forked child): the kernel then skips the lock that makes every ``cgroup.procs``
        write wait for an RCU grace period (~15 ms a spawn on a busy host).  v2 refuses to move a
        thread alone between domain groups: ``cgroup.procs``."""
        name = "tasks" if self.version == 1 else "cgroup.procs"
        return [str(folder / name) for folder in self.folders]

    def preexec(self) -> Callable[[], None]:
        return join_preexec(self.join_files)

    def create(self) -> None:
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
        for write in limit_writes(self.version, self.limits):
            path = self.dirs[write.controller] / write.file
            if write.optional and not path.exists():
                continue
            _write(path, write.value)

    def read(self, controller: str, file: str) -> str:
        return (self.dirs[controller] / file).read_text()

    def oom_killed(self) -> bool:
        if self.limits.memory_bytes is None:
            return False
        try:
            if self.version == 2:
                return bool(oom_kills(2, self.read("memory", "memory.events")))
            kills = oom_kills(1, self.read("memory", "memory.oom_control"))
            if kills is None:  # an old kernel: the limit was hit and not reclaimed
                return int(self.read("memory", "memory.failcnt")) > 0
            return kills > 0
        except (OSError, ValueError):
            return False

    def members(self) -> list[int]:
        """Every process in the group and in any group beneath it."""
        folder = self.dirs.get(FREEZER, self.dirs["pids"])
        found: list[int] = []
        for path, _dirs, files in os.walk(folder):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    found += parse_pids(Path(path, "cgroup.procs").read_text())
        return found

    async def kill(self) -> list[int]:
        """SIGKILL everything in the group until it is empty; returns the pids that were signalled.
        v2: ``cgroup.kill``.  v1: freeze, signal each member, thaw (a frozen process cannot fork
        between the listing and the signal), repeated until no member is left."""
        seen: list[int] = []
        kill_file = self.dirs["pids"] / "cgroup.kill"
        freezer = self.dirs.get(FREEZER)
        for _ in range(KILL_ROUNDS):
            members = self.members()
            if not members:
                return seen
            seen += [pid for pid in members if pid not in seen]
            if self.version == 2 and kill_file.exists():
                with contextlib.suppress(OSError):
                    _write(kill_file, "1")
            else:
                if freezer is not None:
                    with contextlib.suppress(OSError):
                        _write(freezer / "freezer.state", "FROZEN")
                for pid in members:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                if freezer is not None:
                    with contextlib.suppress(OSError):
                        _write(freezer / "freezer.state", "THAWED")
            await asyncio.sleep(0.01)
        return seen

    def remove(self) -> bool:
        """Remove the group's folders (deepest first); False if one is still busy."""
        removed = True
        for folder in self.folders:
            for path, _dirs, _files in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    removed = False
        return removed


class CgroupHost:
    """This agent's part of the host's cgroups."""

    def __init__(self, layout: Layout, tree: str) -> None:
        self.layout = layout
        self.tree = tree

    @classmethod
    def detect(cls, tree: str) -> CgroupHost:
        """Find the layout and make the agent's tree (v2: moving the agent into its leaf);
        ``CgroupsUnavailable`` says why that is not possible here."""
        try:
            layout = detect_layout(Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text(),
                                   lambda path: path.read_text())
        except OSError as exc:
            raise CgroupsUnavailable(f"cannot read /proc: {exc}") from exc
        host = cls(layout, tree)
        try:
            host._make_tree()
        except OSError as exc:
            raise CgroupsUnavailable(f"cgroup v{layout.version}: cannot set up the agent's groups: "
                                     f"{exc.strerror or exc} ({getattr(exc, 'filename', '')})") from exc
        return host

    def _make_tree(self) -> None:
        if self.layout.version == 2:
            h = self.layout.hierarchies["cpu"]
            _base, leaf = agent_base(h, 2)
            if leaf is not None:
                (h.mount / leaf).mkdir(exist_ok=True)
                _write(h.mount / leaf / "cgroup.procs", "0")
            for control in subtree_controls(self.layout, self.tree):
                control.parent.mkdir(exist_ok=True)
                _write(control, " ".join(f"+{c}" for c in CONTROLLERS))
        else:
            for folder in agent_tree(self.layout, self.tree).values():
                folder.mkdir(parents=True, exist_ok=True)

    def group(self, name: str, limits: Limits) -> NodeGroup:
        return NodeGroup(self.layout.version, node_dirs(self.layout, self.tree, name), limits)

    def leftovers(self) -> list[str]:
        """Names of the node groups present under this agent's tree (a previous life's)."""
        names: set[str] = set()
        for folder in agent_tree(self.layout, self.tree).values():
            with contextlib.suppress(OSError):
                names.update(entry.name for entry in os.scandir(folder) if entry.is_dir())
        return sorted(names)

    def close(self) -> None:
        """At the agent's stop: remove its (then empty) tree; one still busy stays for the next start."""
        for folder in agent_tree(self.layout, self.tree).values():
            with contextlib.suppress(OSError):
                folder.rmdir()

    @property
    def describe(self) -> str:
        places = sorted({str(folder) for folder in agent_tree(self.layout, self.tree).values()})
        return f"cgroup v{self.layout.version}: {', '.join(places)}"
