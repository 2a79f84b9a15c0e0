"""One node's process on this host: its run folder, the process (the boot file, or ``podman run``),
its log sink (file + ``tm.logs.<job>.<node>``, with the job's size limit), stopping it, and
cleaning up what a lost node left behind.

The plan is made in ``launch`` (pure); the agent (``app``) decides *when* to run and reports.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import structlog

from services.executor_agent.launch import Launch, Refused, RunKey
from trainmaster.cgroups import NodeGroup
from trainmaster.containers import podman
from trainmaster.procs import child_preexec

# one published log message at most this long: a line without newlines must not become a
# message the server refuses (max_payload) or a buffer that grows without end
MAX_LINE_BYTES = 16 * 1024
PUBLISH_BATCH = 64
# lines waiting for the bus.  When the queue is full the readers wait for room, so a script
# that prints faster than the bus takes lines is slowed down (its pipe fills) rather than losing
# lines; but after STALL_S without room the bus is taken to be stuck and lines go to the log
# file only until the queue has drained to half: a dead bus must never stall training.
MAX_QUEUED_LINES = 4096
STALL_S = 5.0
READ_DRAIN_S = 5.0
AGENT_STREAM = "trainmaster"  # Tm-Stream of the agent's own lines (staging, runtime, truncation)
AGENT_PREFIX = "[trainmaster] "

Publish = Callable[[bytes, str, dict[str, str]], Awaitable[None]]


# ------------------------------------------------------------------------------ run folder
def preflight(launch: Launch) -> None:
    """Check what the plan refers to exists here, before anything is started."""
    if launch.kind == "framework":
        if not launch.cwd.is_dir():
            raise Refused(f"algorithm.code_dir {launch.cwd} is not a directory on this agent")
        if launch.boot_file is None or not launch.boot_file.is_file():
            raise Refused(f"boot file {launch.boot_file} does not exist")
    for source in launch.sources:
        if source.local is not None and not source.local.exists():
            raise Refused(f"data path {source.local} does not exist on this agent")


def prepare_run_dir(run_dir: Path, launch: Launch) -> None:
    # a leftover of an earlier start of this very run (agent crash before the ack) is replaced
    for stale in (run_dir / "input", launch.output_dir):
        if stale.is_symlink() or stale.is_file():
            stale.unlink()
        elif stale.exists():
            shutil.rmtree(stale)
    launch.output_dir.mkdir(parents=True)
    (run_dir / "input").mkdir(parents=True)
    for link, target in launch.data_links:
        link.symlink_to(target, target_is_directory=target.is_dir())
    if launch.log_file.parent.is_relative_to(run_dir):  # a job's own log_path: destinations.open_log
        launch.log_file.parent.mkdir(parents=True, exist_ok=True)


def clean_inputs(run_dir: Path) -> None:
    """After the node: its staged inputs are hard links into the cache; removing them lets the cache
    evict what no run uses (the run's other files stay for the record)."""
    shutil.rmtree(run_dir / "input", ignore_errors=True)


def leftover_members(pgid: int, job_id: str, proc_root: Path = Path("/proc")) -> list[int]:
    """Processes still in process group ``pgid`` that carry ``TM_JOB_ID=<job_id>``.

    After the agent itself was killed, the group id recorded for a run may have been reused by
    the time it restarts; the job id in each process's environment makes sure we only ever
    signal what this agent started."""
    marker = f"TM_JOB_ID={job_id}".encode()
    members: list[int] = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the command name (field 2) may hold spaces and parentheses: split after the last ")"
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                members.append(int(entry.name))
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
            continue
    return members


def kill_leftovers(pgid: int, job_id: str) -> list[int]:
    members = leftover_members(pgid, job_id)
    if members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return members


def folder_bytes(root: Path, skip: frozenset[str] = frozenset()) -> int:
    """Disk space the files under ``root`` take (allocated blocks: a sparse file counts what it
    holds), without following links; top-level entries named in ``skip`` are left out."""
    total = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # removed meanwhile, or not readable
            continue
        for entry in entries:
            if folder == root and entry.name in skip:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


def split_lines(pending: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their newline) and the unfinished rest; overlong lines are cut."""
    *lines, rest = pending.split(b"\n")
    out: list[bytes] = []
    for line in lines:
        line = line.removesuffix(b"\r")
        out.extend(line[i:i + MAX_LINE_BYTES] for i in range(0, len(line), MAX_LINE_BYTES))
        if not line:
            out.append(b"")
    while len(rest) > MAX_LINE_BYTES:
        out.append(rest[:MAX_LINE_BYTES])
        rest = rest[MAX_LINE_BYTES:]
    return out, rest


# ------------------------------------------------------------------------------ logs
class LogSink:
    """Appends a node's lines to its log file and publishes them to ``tm.logs.<job>.<node>``.

    The read loops only queue lines; one publisher task sends them in batches with many
    publishes in flight, since awaiting one JetStream ack per line caps a chatty script at a
    few thousand lines a second.  See ``MAX_QUEUED_LINES`` for what happens when it falls behind.

    ``limit_bytes``: the node's share of the job's log limit.  The line that would pass it is
    replaced by a marker line (file and subject); later lines are counted and dropped — the
    readers keep draining the pipes, so the script never blocks — and closing adds a last marker
    with the count.  ``note`` writes the agent's own ``[trainmaster]`` lines (not counted)."""

    def __init__(self, *, key: RunKey, subject: str, publish: Publish, file: Path, header: str,
                 log: structlog.stdlib.BoundLogger, limit_bytes: int | None = None,
                 opened: BinaryIO | None = None) -> None:
        self._key = key
        self._subject = subject
        self._publish = publish
        self._log = log
        self._file = opened if opened is not None else file.open("ab")
        self._file.write(header.encode() + b"\n")
        self._file.flush()
        self._queue: asyncio.Queue[tuple[int, str, bytes] | None] = asyncio.Queue(MAX_QUEUED_LINES)
        self.limit_bytes = limit_bytes
        self.written_bytes = 0
        self.dropped = 0
        self.lines = 0  # numbered lines (published or not): Tm-Line
        self.not_published = 0
        self._shedding = False
        self._file_error: str | None = None
        self._task = asyncio.create_task(self._publish_loop(), name=f"logs-{key.label}")

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    async def write(self, stream: str, line: bytes) -> None:
        if self.limit_bytes is not None:
            if self.dropped:
                self.dropped += 1
                return
            if self.written_bytes + len(line) + 1 > self.limit_bytes:
                self.dropped = 1
                self.note(f"log truncated after {self.written_bytes} bytes (this node's share of the job's "
                          f"log limit); further lines are dropped")
                self._log.warning("log limit reached; dropping further lines", limit_bytes=self.limit_bytes)
                return
            self.written_bytes += len(line) + 1
        await self._line(stream, line)

    def note(self, text: str) -> None:
        """One line from the agent itself (never blocks: a full queue only skips the publish)."""
        self.lines += 1
        line = (AGENT_PREFIX + text).encode()
        self._to_file(line)
        self.flush()
        try:
            self._queue.put_nowait((self.lines, AGENT_STREAM, line))
        except asyncio.QueueFull:
            self.not_published += 1

    async def _line(self, stream: str, line: bytes) -> None:
        self.lines += 1
        self._to_file(line)
        item = (self.lines, stream, line)
        if self._shedding:
            if self._queue.qsize() > MAX_QUEUED_LINES // 2:
                self.not_published += 1
                return
            self._shedding = False
            self._log.info("log stream caught up; publishing lines again")
        try:
            self._queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            pass
        self.flush()  # while we wait, the file is complete
        try:
            await asyncio.wait_for(self._queue.put(item), STALL_S)
        except TimeoutError:
            self._shedding = True
            self.not_published += 1
            self._log.warning("log stream is stuck; lines go to the log file only for now", stall_s=STALL_S)

    def _to_file(self, line: bytes) -> None:
        if self._file_error is not None:
            return
        try:
            self._file.write(line + b"\n")
        except OSError as exc:
            # a full disk must not kill the reader: the pipe would fill and the script would hang
            self._file_error = f"{type(exc).__name__}: {exc}"
            self._log.error("cannot write the log file; lines go to the log stream only", error=self._file_error)

    def flush(self) -> None:
        if self._file_error is None:
            try:
                self._file.flush()
            except OSError as exc:
                self._file_error = f"{type(exc).__name__}: {exc}"
                self._log.error("cannot write the log file; lines go to the log stream only",
                                error=self._file_error)

    async def close(self, timeout_s: float) -> None:
        """Publish what is queued (bounded by ``timeout_s``), then close the file."""
        if self.dropped:
            self.note(f"log truncated after {self.written_bytes} bytes; {self.dropped} more lines dropped")
        self.flush()
        try:
            await asyncio.wait_for(self._queue.put(None), timeout_s)
            await asyncio.wait_for(self._task, timeout_s)
        except TimeoutError:
            self._task.cancel()
            self._log.warning("gave up publishing the last log lines", queued=self._queue.qsize())
        finally:
            with contextlib.suppress(OSError):
                self._file.close()
        if self.not_published:
            self._log.warning("some log lines were not published", count=self.not_published,
                              lines=self.lines)

    async def _publish_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while first is not None and len(batch) < PUBLISH_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            items = [item for item in batch if item is not None]
            if items:
                await self._publish_batch(items)
            if batch[-1] is None:
                return

    async def _publish_batch(self, items: list[tuple[int, str, bytes]]) -> None:
        for attempt in range(3):
            results = await asyncio.gather(*(self._publish_one(item) for item in items), return_exceptions=True)
            failed = [item for item, result in zip(items, results, strict=True) if isinstance(result, BaseException)]
            if not failed:
                return
            # the Nats-Msg-Id of each line makes a retry of a publish that did land a no-op
            items = failed
            if attempt < 2:
                await asyncio.sleep(0.5 * (attempt + 1))
        self.not_published += len(items)

    async def _publish_one(self, item: tuple[int, str, bytes]) -> None:
        number, stream, line = item
        headers = {"Tm-Stream": stream, "Tm-Line": str(number), "Nats-Msg-Id": self._key.msg_id(number)}
        await self._publish(line, self._subject, headers)


# ------------------------------------------------------------------------------ the process
class Run:
    """One node from its assignment to its outcome: preparation (a task the agent runs: staging,
    runtime, rendezvous), then the process."""

    def __init__(self, key: RunKey, launch: Launch, log: structlog.stdlib.BoundLogger, *,
                 assign_seq: int = 0, containers_conf: Path | None = None) -> None:
        self.key = key
        self.launch = launch
        self.log = log
        self.assign_seq = assign_seq  # stream sequence of the Assign (orders it against Cancels)
        self.containers_conf = containers_conf
        self.proc: asyncio.subprocess.Process | None = None
        self.cgroup: NodeGroup | None = None  # set before start where the agent uses cgroups
        self.out_of_memory = False  # the group's OOM killer fired (read before the group is removed)
        self.preparing: asyncio.Task | None = None
        self.stop_reason: str | None = None
        self.report_lock = asyncio.Lock()
        self.running_reported = False
        self._grace_s = 10.0
        self._killer: asyncio.Task[None] | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._sink: LogSink | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=5)

    @property
    def container(self) -> str | None:
        return self.launch.container.name if self.launch.container else None

    @property
    def last_error_line(self) -> str | None:
        return self._stderr_tail[-1] if self._stderr_tail else None

    async def start(self, sink: LogSink, argv: list[str], env: dict[str, str],
                    preexec: Callable[[], None] = child_preexec) -> None:
        self._sink = sink
        self.proc = await asyncio.create_subprocess_exec(
            *argv, cwd=self.launch.cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            # own session = own process group: a stop signals the script and everything it forked;
            # the death signal stops the script should the agent itself be killed; ``preexec``
            # (procs.job_preexec) also drops the job to its user with no_new_privs
            start_new_session=True, preexec_fn=preexec,
        )
        self._readers = [
            asyncio.create_task(self._read(self.proc.stdout, "stdout"), name=f"stdout-{self.key.label}"),
            asyncio.create_task(self._read(self.proc.stderr, "stderr"), name=f"stderr-{self.key.label}"),
        ]
        self.log.info("node started", pid=self.proc.pid, argv=argv)
        if self.stop_reason is not None:  # a stop came in while it was starting
            self.stop(self.stop_reason, self._grace_s)

    def stop(self, reason: str, grace_s: float) -> None:
        """Preparing: cancel it.  Running: SIGTERM the process group (or ``podman stop`` the
        container) now, SIGKILL after ``grace_s``.  The first reason wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._grace_s = grace_s
        if self.proc is None:
            if self.preparing is not None and not self.preparing.done():
                self.preparing.cancel()
            return
        if self.proc.returncode is not None or self._killer is not None:
            return
        self.log.info("stopping node", reason=self.stop_reason, grace_s=grace_s)
        if self.container is None:
            self._signal_group(signal.SIGTERM)
        self._killer = asyncio.create_task(self._stop_then_kill(grace_s), name=f"kill-{self.key.label}")

    async def wait(self) -> int:
        """Wait for the process and drain its output; returns its return code."""
        assert self.proc is not None and self._sink is not None
        # Process.wait() also waits for the output pipes to close, and what the script left running
        # holds them open: the exit itself is watched for, then the leftovers are killed
        closed = asyncio.ensure_future(self.proc.wait())
        while not closed.done() and self.proc.returncode is None:
            await asyncio.wait({closed}, timeout=0.1)
        returncode = self.proc.returncode
        assert returncode is not None
        if self._killer is not None:
            self._killer.cancel()
        # whatever the script left running in its group goes with it: no orphans on the host
        self._signal_group(signal.SIGKILL)
        await self._end_cgroup()
        await asyncio.wait({closed}, timeout=READ_DRAIN_S)
        closed.cancel()  # still open: a process outside the node's reach holds a pipe
        if self.container and self.containers_conf:
            # normally gone already (--rm); not so if the podman client itself was killed
            await podman(["rm", "-f", "--ignore", self.container], self.containers_conf)
        _, pending = await asyncio.wait(self._readers, timeout=READ_DRAIN_S)
        for task in pending:  # a process outside the group still holds the pipe
            task.cancel()
        self.log.info("node process ended", returncode=returncode, log_lines=self._sink.lines,
                      log_dropped=self._sink.dropped)
        return returncode

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        # the group id is the leader's pid; the kernel keeps it reserved while any member lives
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def _stop_then_kill(self, grace_s: float) -> None:
        if self.container and self.containers_conf:
            # the container runs under conmon, outside our process group: podman stops it (SIGTERM
            # through --init, SIGKILL after the grace).  Until podman run has created it, retry.
            deadline = asyncio.get_running_loop().time() + grace_s + 10
            while self.proc is not None and self.proc.returncode is None:
                code, _out = await podman(["stop", "-t", str(int(max(1, grace_s))), self.container],
                                         self.containers_conf, timeout_s=grace_s + 30)
                if code == 0 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(5)
        else:
            await asyncio.sleep(grace_s)
        if self.proc is not None and self.proc.returncode is None:
            self.log.warning("node ignored SIGTERM; killing it", grace_s=grace_s)
            if self.container and self.containers_conf:
                await podman(["rm", "-f", "--ignore", self.container], self.containers_conf)
            self._signal_group(signal.SIGKILL)
            if self.cgroup is not None:  # what left the process group (setsid, a daemon) too
                await self.cgroup.kill()

    async def _end_cgroup(self) -> None:
        """Kill what is left in the node's cgroup, note an OOM kill, and remove the group."""
        if self.cgroup is None:
            return
        leftovers = await self.cgroup.kill()
        if leftovers:
            self.log.info("killed what the node left running", pids=leftovers[:20], count=len(leftovers))
        self.out_of_memory = self.cgroup.oom_killed()
        if not self.cgroup.remove():
            self.log.warning("the node's cgroup could not be removed", folders=[str(f) for f in self.cgroup.folders])

    async def _read(self, stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None and self._sink is not None
        pending = b""
        while chunk := await stream.read(64 * 1024):
            lines, pending = split_lines(pending + chunk)
            for line in lines:
                await self._sink.write(name, line)
                if name == "stderr" and line.strip():
                    self._stderr_tail.append(line.decode("utf-8", "replace").strip())
            self._sink.flush()
        if pending:
            await self._sink.write(name, pending)
            self._sink.flush()
