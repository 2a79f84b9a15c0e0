"""A real S3-compatible HTTP server for tests: moto in server mode, as its own process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from trainmaster.procs import child_preexec
from trainmaster.settings import Settings

ACCESS_KEY = "testing"
SECRET_KEY = "testing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    log_file: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a service process needs to reach this server."""
        return {"TM_S3_ENDPOINT_URL": self.endpoint_url, "TM_S3_ACCESS_KEY_ID": ACCESS_KEY,
                "TM_S3_SECRET_ACCESS_KEY": SECRET_KEY}

    def settings(self, **overrides: object) -> Settings:
        return Settings(s3_endpoint_url=self.endpoint_url, s3_access_key_id=ACCESS_KEY,
                        s3_secret_access_key=SECRET_KEY, **overrides)

    def start(self, timeout_s: float = 30.0) -> S3Server:
        moto = Path(sys.executable).with_name("moto_server")
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=child_preexec)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}; see {self.log_file}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"moto_server did not answer in {timeout_s}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
