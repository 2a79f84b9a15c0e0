"""Processes the harness runs itself, restarted like systemd's ``Restart=always``.

The harness does not use ``trainmaster up``'s supervisor on purpose: what is measured is the
services' own recovery, given only what any init system gives them (a dead process is started
again after ``restart_delay_s``).  A fault that kills a process says so (``expect_exit``); any
other exit is an unexpected crash and is reported.

Every process is started from the thread that runs the harness's event loop: children get
``PR_SET_PDEATHSIG`` (``trainmaster.procs.child_preexec``), so they die with the harness however
it dies, and their own children (job nodes) die with them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainmaster.procs import child_preexec


@dataclass
class Managed:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    restart: bool = True  # start again when it dies (systemd Restart=always)
    restart_delay_s: float = 1.0
    proc: subprocess.Popen | None = None
    starts: int = 0
    died_at: float | None = None  # monotonic time its death was noticed
    expected_exits: int = 0  # exits a fault caused (each expected exit is consumed by one death)
    unexpected: list[str] = field(default_factory=list)
    held: bool = False  # a fault keeps it down (not restarted) until released
    # a watchdog beside the init system: a reason to restart a process that is up but stuck
    # (nats-server's failed store writes: trainmaster.nats_health), checked every second
    health_check: Callable[[], str | None] | None = None
    watchdog_restarts: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== chaos: start #{self.starts + 1} of {self.name} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=child_preexec, start_new_session=True)
        self.starts += 1
        self.died_at = None

    def signal(self, sig: int, *, expect_exit: bool = False) -> None:
        if self.alive():
            assert self.proc is not None
            if expect_exit:
                self.expected_exits += 1
            self.proc.send_signal(sig)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (a SIGSTOPped one gets SIGCONT too), then SIGKILL after ``grace_s``."""
        self.restart = False
        if not self.alive():
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def notice_death(self, now: float) -> bool:
        """Record a death once; True when it is time to start it again."""
        if self.proc is None or self.proc.poll() is None:
            return False
        if self.died_at is None:
            self.died_at = now
            if self.expected_exits > 0:
                self.expected_exits -= 1
            else:
                self.unexpected.append(f"{self.name} exited with {self.proc.returncode} at {time.time():.3f}")
        return self.restart and not self.held and now - self.died_at >= self.restart_delay_s


class Fleet:
    """The processes of one scenario and the task that restarts them."""

    def __init__(self) -> None:
        self.procs: list[Managed] = []
        self._task: asyncio.Task | None = None

    def add(self, proc: Managed, start: bool = True) -> Managed:
        self.procs.append(proc)
        if start:
            proc.start()
        return proc

    def named(self, prefix: str) -> list[Managed]:
        return [p for p in self.procs if p.name.startswith(prefix)]

    def watch(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        checked = 0.0
        while True:
            now = time.monotonic()
            for proc in self.procs:
                if proc.notice_death(now):
                    proc.start()
            if now - checked >= 1.0:
                checked = now
                await self._check_health()
            await asyncio.sleep(0.1)

    async def _check_health(self) -> None:
        for proc in self.procs:
            if proc.health_check is None or not proc.alive():
                continue
            reason = await asyncio.to_thread(proc.health_check)
            if reason is not None:
                proc.watchdog_restarts.append(f"{proc.name} restarted by the watchdog at {time.time():.3f}: {reason}")
                proc.signal(signal.SIGTERM, expect_exit=True)

    async def stop_all(self, grace_s: float = 10.0) -> None:
        """Agents first (their nodes are stopped and reported while the bus is up), then the
        services, nats-server last."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        order = {"agent": 0, "nats": 2}
        groups: dict[int, list[Managed]] = {}
        for proc in self.procs:
            groups.setdefault(order.get(proc.name.split("-")[0], 1), []).append(proc)
        for _, group in sorted(groups.items()):
            for proc in group:
                proc.restart = False
                if proc.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid or 0, signal.SIGCONT)
                        os.kill(proc.pid or 0, signal.SIGTERM)
            for proc in group:
                await asyncio.to_thread(proc.stop, grace_s)

    def unexpected_exits(self) -> list[str]:
        return [line for proc in self.procs for line in proc.unexpected]
