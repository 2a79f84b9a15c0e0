"""Runtimes of the "common framework" engines: one cached virtual environment per engine, engine
version, package list, ``requirements.txt`` content and base Python, built once per agent and
reused by every later node that needs the same one.

How a runtime is made (the decision, and why):

- ``python -m venv --without-pip`` from the agent's own interpreter (cheap: docs/benchmarks.md,
  "Figures the code relies on"), plus a ``.pth`` file that adds the agent's site-packages *after*
  the runtime's own.  A plain ``--system-site-packages`` would not do: a venv made from a venv
  sees the *base* interpreter's packages, not the agent's.  So the common case — the engine's
  packages are already installed beside the agent (scikit-learn, PyTorch CPU) — costs no download
  and works offline.
- Only what is missing or named by the code's ``requirements.txt`` is installed, with the agent's
  pip running inside the runtime (``<runtime>/bin/python -m pip install``): packages land in the
  runtime's own site-packages and shadow the agent's versions; the agent's environment is never
  changed.
- A build holds a lock (an asyncio lock in the agent, ``flock`` across processes), writes its
  output to ``build.log`` in the runtime folder, and marks success with ``.tm-ready``; a folder
  without the marker is a failed or interrupted build and is built again.

``runtime_key`` is pure; ``RuntimeCache`` runs processes.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import site
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainmaster.procs import run_captured

READY_FILE = ".tm-ready"
BUILD_LOG = "build.log"
REQUIREMENTS_FILE = "requirements.txt"

# Run by the runtime's interpreter: which of the requirements given as arguments are not met by
# what that interpreter can import (its own packages first, then the agent's).  Markers are honoured.
_CHECK = """
import json, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
missing = []
for text in sys.argv[1:]:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        missing.append(text)
        continue
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        missing.append(text)
print(json.dumps(missing))
"""


class RuntimeBuildFailed(Exception):
    """The runtime could not be built; ``reason`` ends with the last lines pip wrote."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RuntimeSpec:
    engine: str
    version: str
    packages: tuple[str, ...]
    requirements: str  # the code's requirements.txt ("" when it has none)
    base_python: str  # the agent's interpreter, which the runtime is made from
    base_version: str  # its sys.version: a Python upgrade must not reuse an old runtime

    @property
    def key(self) -> str:
        return runtime_key(self)

    def describe(self) -> str:
        extra = " + requirements.txt" if self.requirements.strip() else ""
        return f"{self.engine} {self.version}{extra}"


def runtime_key(spec: RuntimeSpec) -> str:
    """A short, stable name for a runtime: the hash of everything that changes what it contains."""
    material = json.dumps([spec.engine, spec.version, sorted(spec.packages), spec.requirements.replace("\r\n", "\n"),
                           spec.base_python, spec.base_version], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def read_requirements(code_dir: Path) -> str:
    path = code_dir / REQUIREMENTS_FILE
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return ""


@dataclass(frozen=True)
class Runtime:
    key: str
    python: Path
    built: bool  # False: reused as it was
    seconds: float
    installed: tuple[str, ...] = ()


Note = Callable[[str], None]


class RuntimeCache:
    """Runtimes under ``root`` (``<agent workdir>/runtimes``), built once, reused after."""

    def __init__(self, root: Path, *, base_python: str = sys.executable, pip_timeout_s: float = 1800.0) -> None:
        self.root = root
        self.base_python = base_python
        self.pip_timeout_s = pip_timeout_s
        self._locks: dict[str, asyncio.Lock] = {}
        self.builds = 0  # counters, for the agent's log and the tests
        self.reuses = 0

    def spec(self, engine: str, version: str, packages: Sequence[str], requirements: str) -> RuntimeSpec:
        return RuntimeSpec(engine, version, tuple(packages), requirements, self.base_python, sys.version)

    def python_of(self, spec: RuntimeSpec) -> Path:
        """Where the runtime's interpreter is (known before it is built: the launch plan names it)."""
        return self.root / spec.key / "bin" / "python"

    async def ensure(self, spec: RuntimeSpec, note: Note | None = None) -> Runtime:
        key = spec.key
        lock = self._locks.setdefault(key, asyncio.Lock())
        started = time.monotonic()
        async with lock:
            self.root.mkdir(parents=True, exist_ok=True)
            lock_file = await asyncio.to_thread(_flock, self.root / f"{key}.lock")
            try:
                folder = self.root / key
                if (folder / READY_FILE).is_file():
                    self.reuses += 1
                    return Runtime(key, self.python_of(spec), False, time.monotonic() - started)
                installed = await self._build(spec, folder, note)
                self.builds += 1
                seconds = time.monotonic() - started
                (folder / READY_FILE).write_text(json.dumps({
                    "engine": spec.engine, "version": spec.version, "packages": list(spec.packages),
                    "installed": installed, "seconds": round(seconds, 3), "built_at": time.time()}))
                return Runtime(key, self.python_of(spec), True, seconds, tuple(installed))
            finally:
                lock_file.close()  # releases the flock

    async def _build(self, spec: RuntimeSpec, folder: Path, note: Note | None) -> list[str]:
        # an interrupted or failed build leaves a folder without the ready marker
        await asyncio.to_thread(shutil.rmtree, folder, True)
        code, out = await _run([self.base_python, "-m", "venv", "--without-pip", str(folder)], 120)
        if code != 0:
            raise RuntimeBuildFailed(f"runtime build failed: python -m venv exited with {code}: {_tail(out)}")
        python = self.python_of(spec)
        # the agent's packages, after the runtime's own; addsitedir also reads their .pth files
        site_dirs = agent_site_dirs()
        purelib = await _purelib(python)
        lines = [f"import site; site.addsitedir({d!r})" for d in site_dirs]
        (Path(purelib) / "zz-trainmaster-agent.pth").write_text("\n".join(lines) + "\n")

        missing = await self._missing(python, spec.packages) if spec.packages else []
        requirements = folder / REQUIREMENTS_FILE
        args: list[str] = list(missing)
        if spec.requirements.strip():
            requirements.write_text(spec.requirements)
            args += ["-r", str(requirements)]
        if not args:
            return []
        if note:
            wanted = [*missing, *(["-r requirements.txt"] if spec.requirements.strip() else [])]
            note(f"runtime {spec.describe()}: installing {' '.join(wanted)}")
        argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                "--progress-bar", "off", *args]
        code, out = await _run(argv, self.pip_timeout_s, env={"PIP_REQUIRE_VIRTUALENV": "0"})
        (folder / BUILD_LOG).write_text(out)
        if code != 0:
            await asyncio.to_thread(shutil.rmtree, folder, True)
            raise RuntimeBuildFailed(f"runtime build failed: {_tail(out)}")
        return args

    async def _missing(self, python: Path, packages: Sequence[str]) -> list[str]:
        code, out = await _run([str(python), "-c", _CHECK, *packages], 120)
        if code != 0:
            raise RuntimeBuildFailed(f"runtime build failed: cannot check the engine's packages: {_tail(out)}")
        try:
            return list(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError) as exc:
            raise RuntimeBuildFailed(f"runtime build failed: unexpected answer {out[-200:]!r}") from exc


def agent_site_dirs() -> list[str]:
    """The agent's own site-packages folders (its virtual environment's)."""
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def _flock(path: Path):
    handle = path.open("a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


async def _purelib(python: Path) -> str:
    code, out = await _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], 60)
    if code != 0:
        raise RuntimeBuildFailed(f"runtime build failed: the new interpreter does not start: {_tail(out)}")
    return out.strip().splitlines()[-1]


async def _run(argv: list[str], timeout_s: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    # the agent's own virtual environment must not leak into the runtime being built
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    full_env.update(env or {})
    return await run_captured(argv, timeout_s, full_env)


def _tail(text: str, lines: int = 3, limit: int = 400) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-limit:] or "(no output)"
