"""One node of one job on this host: plan the launch, run the boot file, stream its logs, copy
its outputs, and say how it ended.

``plan_launch`` and ``outcome`` are pure; ``Run`` and ``LogSink`` are the process and bus
adapters.  The agent (``app.py``) decides *when* to run and reports; this module knows *how*.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from trainmaster.locations import locate
from trainmaster.messages import Assign, ParamValue
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

Publish = Callable[[bytes, str, dict[str, str]], Awaitable[None]]


class Refused(Exception):
    """The node cannot run on this agent; ``exit_code`` 2 = a problem with the job's spec."""

    def __init__(self, reason: str, exit_code: int = 2) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass(frozen=True)
class RunKey:
    job_id: str
    attempt: int
    node: int

    @property
    def label(self) -> str:
        """How heartbeats list a running node: ``<job_id>/<node>/<attempt>``."""
        return f"{self.job_id}/{self.node}/{self.attempt}"

    def msg_id(self, suffix: str | int) -> str:
        return f"{self.job_id}.{self.attempt}.{self.node}.{suffix}"

    def run_dir(self, workdir: Path) -> Path:
        return workdir / "runs" / self.job_id / f"a{self.attempt}-n{self.node}"

    @classmethod
    def of(cls, assign: Assign) -> RunKey:
        return cls(assign.job_id, assign.attempt, assign.node)


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    data_dir: Path  # what --data_url names
    data_links: list[tuple[Path, Path]]  # (link, target) when several sources are staged
    output_dir: Path  # what --train_url names
    output_path: Path | None  # where the outputs are copied after the run
    log_file: Path
    header: str


# ------------------------------------------------------------------------------ pure planning
def local_path(value: str, field: str) -> Path:
    """The local path of ``/abs`` or ``file:///abs``; other schemes come with later issues.

    Read with ``trainmaster.locations`` so that the agent reads a location exactly as the
    validator did; a relative path never passed validation, and here it would silently mean
    "relative to wherever the agent was started"."""
    location = locate(value)
    if location.kind == "local":
        # normpath, not resolve(): keep the user's symlinks as they are
        return Path(os.path.normpath(location.path))
    if location.kind == "remote":
        raise Refused(f"{field}: {location.path}:// paths are not supported by this agent yet ({value})")
    if location.kind == "relative":
        raise Refused(f"{field}: {value!r} is a relative path; the agent needs an absolute one")
    raise Refused(f"{field}: {value!r} is not a usable location")


def format_param(value: ParamValue) -> str:
    # bool before int: bool is an int, and scripts expect true/false, not True/False
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "job"


def plan_launch(assign: Assign, run_dir: Path, *, python: str, environ: Mapping[str, str],
                master_port: int, now: float) -> Launch:
    """Everything needed to start the node, or ``Refused`` with a reason a user can act on."""
    spec = assign.spec
    algo = spec.algorithm
    if algo.source != "framework":
        raise Refused(f"algorithm source {algo.source} is not supported by this agent yet")
    if not algo.code_dir or not algo.boot_file:
        raise Refused("a framework job needs algorithm.code_dir and algorithm.boot_file")
    code_dir = local_path(algo.code_dir, "algorithm.code_dir")
    # the boot file is read both ways the project writes it: relative to the code folder (job
    # files) or as an absolute path inside it (what the validator asks of API requests)
    if locate(algo.boot_file).kind == "relative":
        boot_file = Path(os.path.normpath(code_dir / algo.boot_file))
    else:
        boot_file = local_path(algo.boot_file, "algorithm.boot_file")

    targets: list[Path] = []
    for i, source in enumerate(spec.data):
        if source.dataset is not None:
            raise Refused(f"data[{i}]: dataset sources ({source.dataset}) are not supported by this agent yet")
        if not source.path:
            raise Refused(f"data[{i}] has no path")
        targets.append(local_path(source.path, f"data[{i}].path"))
    input_dir = run_dir / "input"
    if len(targets) == 1:
        data_dir, links = targets[0], []
    else:
        # several sources: one folder of numbered links, so the script still gets one --data_url
        data_dir, links = input_dir, [(input_dir / str(i), t) for i, t in enumerate(targets)]

    output_path = local_path(spec.output_path, "output_path") if spec.output_path else None
    log_dir = local_path(spec.log_path, "log_path") if spec.log_path else run_dir / "logs"
    log_file = log_dir / f"{safe_name(assign.name)}-{safe_name(assign.version)}-node{assign.node}.log"

    output_dir = run_dir / "output"
    argv = [python, str(boot_file), f"--data_url={data_dir}", f"--train_url={output_dir}",
            *(f"--{name}={format_param(value)}" for name, value in spec.parameters.items())]
    env = {
        **environ,
        "PYTHONUNBUFFERED": "1",  # lines reach the log stream as they are printed
        "TM_JOB_ID": assign.job_id,
        "TM_JOB_NAME": assign.name,
        "TM_JOB_VERSION": assign.version,
        "TM_ATTEMPT": str(assign.attempt),
        "WORLD_SIZE": str(assign.node_count),
        "RANK": str(assign.node),
        "NODE_RANK": str(assign.node),
        "LOCAL_RANK": "0",
    }
    if assign.node_count == 1:
        # a single node is its own master; several nodes get theirs from the placement (later)
        env["MASTER_ADDR"] = "127.0.0.1"
        env["MASTER_PORT"] = str(master_port)
    header = (f"# trainmaster job {assign.job_id} ({assign.name} {assign.version}) attempt {assign.attempt} "
              f"node {assign.node}/{assign.node_count} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}: "
              f"{shlex.join(argv)}")
    return Launch(argv=argv, cwd=code_dir, env=env, data_dir=data_dir, data_links=links,
                  output_dir=output_dir, output_path=output_path, log_file=log_file, header=header)


def exit_code_of(returncode: int) -> int:
    """Shell convention: a process killed by signal N exits 128+N (SIGTERM -> 143)."""
    return 128 - returncode if returncode < 0 else returncode


def outcome(returncode: int, stop_reason: str | None, copy_error: str | None,
            last_error_line: str | None) -> tuple[int, str | None]:
    """The exit code and reason to report for a finished node."""
    code = exit_code_of(returncode)
    if stop_reason is not None:
        reason: str | None = stop_reason
    elif returncode < 0:
        reason = f"the boot file was killed by signal {signal.Signals(-returncode).name}"
    elif returncode != 0:
        reason = f"the boot file exited with code {code}"
        if last_error_line:
            reason += f": {last_error_line[:300]}"
    else:
        reason = None
    if copy_error is not None:
        # a job whose model was not stored has not succeeded
        if code == 0:
            code = 1
        reason = f"{reason}; {copy_error}" if reason else copy_error
    return code, reason


# ------------------------------------------------------------------------------ side effects
def preflight(launch: Launch) -> None:
    """Check what the plan refers to exists here, before anything is started."""
    if not launch.cwd.is_dir():
        raise Refused(f"algorithm.code_dir {launch.cwd} is not a directory on this agent")
    if not Path(launch.argv[1]).is_file():
        raise Refused(f"boot file {launch.argv[1]} does not exist")
    targets = [t for _, t in launch.data_links] if launch.data_links else [launch.data_dir]
    for target in targets:
        if not target.exists():
            raise Refused(f"data path {target} does not exist on this agent")


def prepare_run_dir(run_dir: Path, launch: Launch) -> None:
    # a leftover of an earlier start of this very run (agent crash before the ack) is replaced
    for stale in (run_dir / "input", launch.output_dir):
        if stale.is_symlink() or stale.is_file():
            stale.unlink()
        elif stale.exists():
            shutil.rmtree(stale)
    launch.output_dir.mkdir(parents=True)
    if launch.data_links:
        launch.data_links[0][0].parent.mkdir(parents=True)
        for link, target in launch.data_links:
            link.symlink_to(target, target_is_directory=target.is_dir())
    launch.log_file.parent.mkdir(parents=True, exist_ok=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


async def copy_outputs(source: Path, destination: Path | None) -> str | None:
    """Copy the run's outputs; returns the problem in words, or None when it worked."""
    if destination is None:
        return None
    try:
        await asyncio.to_thread(shutil.copytree, source, destination, dirs_exist_ok=True)
    except (OSError, shutil.Error) as exc:
        return f"copying the outputs to {destination} failed: {exc}"
    return None


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


class LogSink:
    """Appends a node's lines to its log file and publishes them to ``tm.logs.<job>.<node>``.

    The read loops only queue lines; one publisher task sends them in batches with many
    publishes in flight, since awaiting one JetStream ack per line caps a chatty script at a
    few thousand lines a second.  See ``MAX_QUEUED_LINES`` for what happens when it falls behind."""

    def __init__(self, *, key: RunKey, subject: str, publish: Publish, file: Path, header: str,
                 log: structlog.stdlib.BoundLogger) -> None:
        self._key = key
        self._subject = subject
        self._publish = publish
        self._log = log
        self._file = file.open("ab")
        self._file.write(header.encode() + b"\n")
        self._file.flush()
        self._queue: asyncio.Queue[tuple[int, str, bytes] | None] = asyncio.Queue(MAX_QUEUED_LINES)
        self.lines = 0
        self.not_published = 0
        self._shedding = False
        self._file_error: str | None = None
        self._task = asyncio.create_task(self._publish_loop(), name=f"logs-{key.label}")

    async def write(self, stream: str, line: bytes) -> None:
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


class Run:
    """The process of one node, from start to its outcome."""

    def __init__(self, key: RunKey, launch: Launch, log: structlog.stdlib.BoundLogger, *,
                 assign_seq: int = 0) -> None:
        self.key = key
        self.launch = launch
        self.log = log
        self.assign_seq = assign_seq  # stream sequence of the Assign (orders it against Cancels)
        self.proc: asyncio.subprocess.Process | None = None
        self.stop_reason: str | None = None
        self.report_lock = asyncio.Lock()
        self.running_reported = False
        self._grace_s = 10.0
        self._killer: asyncio.Task[None] | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._sink: LogSink | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=5)

    async def start(self, sink: LogSink) -> None:
        self._sink = sink
        self.proc = await asyncio.create_subprocess_exec(
            *self.launch.argv, cwd=self.launch.cwd, env=self.launch.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            # own session = own process group: a stop signals the script and everything it forked;
            # the death signal stops the script should the agent itself be killed
            start_new_session=True, preexec_fn=child_preexec,
        )
        self._readers = [
            asyncio.create_task(self._read(self.proc.stdout, "stdout"), name=f"stdout-{self.key.label}"),
            asyncio.create_task(self._read(self.proc.stderr, "stderr"), name=f"stderr-{self.key.label}"),
        ]
        self.log.info("node started", pid=self.proc.pid, argv=self.launch.argv)
        if self.stop_reason is not None:  # a stop came in while it was starting
            self.stop(self.stop_reason, self._grace_s)

    def stop(self, reason: str, grace_s: float) -> None:
        """SIGTERM the process group now, SIGKILL it after ``grace_s``; the first reason wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._grace_s = grace_s
        if self.proc is None or self.proc.returncode is not None:
            return
        self.log.info("stopping node", reason=self.stop_reason, grace_s=grace_s)
        self._signal_group(signal.SIGTERM)
        if self._killer is None:
            self._killer = asyncio.create_task(self._kill_after(grace_s), name=f"kill-{self.key.label}")

    async def finish(self, log_timeout_s: float) -> tuple[int, str | None]:
        """Wait for the process, drain and publish its logs, copy its outputs: (exit code, reason)."""
        assert self.proc is not None and self._sink is not None
        returncode = await self.proc.wait()
        if self._killer is not None:
            self._killer.cancel()
        # whatever the script left running in its group goes with it: no orphans on the host
        self._signal_group(signal.SIGKILL)
        _, pending = await asyncio.wait(self._readers, timeout=READ_DRAIN_S)
        for task in pending:  # a process outside the group still holds the pipe
            task.cancel()
        await self._sink.close(log_timeout_s)
        copy_error = await copy_outputs(self.launch.output_dir, self.launch.output_path)
        if copy_error:
            self.log.error("output copy failed", error=copy_error)
        last_error = self._stderr_tail[-1] if self._stderr_tail else None
        code, reason = outcome(returncode, self.stop_reason, copy_error, last_error)
        self.log.info("node exited", returncode=returncode, exit_code=code, reason=reason,
                      log_lines=self._sink.lines)
        return code, reason

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        # the group id is the leader's pid; the kernel keeps it reserved while any member lives
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def _kill_after(self, grace_s: float) -> None:
        await asyncio.sleep(grace_s)
        if self.proc is not None and self.proc.returncode is None:
            self.log.warning("node ignored SIGTERM; killing it", grace_s=grace_s)
            self._signal_group(signal.SIGKILL)

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
