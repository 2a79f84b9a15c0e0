"""A node run's folder as the record of its state (``runstate``): one file per mark.

    assign.json    the Assign (ASSIGNED)
    container      the container's name (LAUNCHED: podman outlives the agent, and must be removed)
    pid            the process group (LAUNCHED: what a dead agent's death signal did not reach)
    exit.json      the exit report (EXITED)
    exit.reported  empty: the exit report was published (REPORTED)

Each is written atomically (a temporary file, then a rename), so a crash leaves a mark whole or
absent.  The names are this module's alone: an agent restarted over an older work folder reads
the same files.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from services.executor_agent.launch import RunKey
from services.executor_agent.runstate import Mark, RunState, state_of
from trainmaster.messages import Assign, NodeReport, encode

_FILES: dict[Mark, str] = {
    Mark.ASSIGNMENT: "assign.json",
    Mark.CONTAINER: "container",
    Mark.PID: "pid",
    Mark.EXIT: "exit.json",
    Mark.REPORTED: "exit.reported",
}

_decode_report = msgspec.json.Decoder(NodeReport).decode
_decode_assign = msgspec.json.Decoder(Assign).decode


def write_atomic(path: Path, data: bytes) -> None:
    """Readable by the agent alone: the assignment holds the job's ``env``, and jobs may cross the
    run folders (their user is the same for every job)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


class RunFolder:
    """Reads the marks of one run folder and writes its transitions.  Reads raise ``OSError``
    for a missing or unreadable file and ``ValueError`` for a garbled one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, workdir: Path, key: RunKey) -> RunFolder:
        return cls(key.run_dir(workdir))

    @classmethod
    def all(cls, workdir: Path) -> list[RunFolder]:
        """Every run folder under ``workdir``, in a stable order."""
        return [cls(path) for path in sorted(workdir.glob("runs/*/a*-n*"))]

    def _file(self, mark: Mark) -> Path:
        return self.path / _FILES[mark]

    # ------------------------------------------------------------------------------ reading
    def marks(self) -> frozenset[Mark]:
        return frozenset(mark for mark in Mark if self._file(mark).exists())

    def state(self) -> RunState:
        return state_of(self.marks())

    def assignment(self) -> Assign:
        return _decode_assign(self._file(Mark.ASSIGNMENT).read_bytes())

    def exit_report(self) -> NodeReport:
        return _decode_report(self._file(Mark.EXIT).read_bytes())

    def container(self) -> str | None:
        path = self._file(Mark.CONTAINER)
        return path.read_text().strip() if path.exists() else None

    def pid(self) -> int | None:
        path = self._file(Mark.PID)
        return int(path.read_text()) if path.exists() else None

    # ------------------------------------------------------------------------------ transitions
    def record_assignment(self, assign: Assign) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self._file(Mark.ASSIGNMENT), encode(assign))

    def record_container(self, name: str) -> None:
        write_atomic(self._file(Mark.CONTAINER), name.encode())

    def record_pid(self, pid: int) -> None:
        write_atomic(self._file(Mark.PID), str(pid).encode())

    def record_exit(self, report: NodeReport) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self._file(Mark.EXIT), encode(report))

    def record_reported(self) -> None:
        write_atomic(self._file(Mark.REPORTED), b"")
