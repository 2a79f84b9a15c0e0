"""What both benchmarks share: statistics, a description of the machine, trivial job files, the
check for leftover processes, and the JSON result file."""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from trainmaster.natsd import server_binary

REPO = Path(__file__).resolve().parents[1]

BOOT_FILE = 'print("hello from a trivial trainmaster job")\n'


# ------------------------------------------------------------------------------ statistics
def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); ``p`` in 0..100."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, min, p50, p90, p99, max of ``values`` (seconds in, seconds out)."""
    return {
        "n": len(values),
        "mean": sum(values) / len(values) if values else math.nan,
        "min": min(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def print_table(rows: Iterable[tuple[str, dict[str, float]]], file=sys.stdout) -> None:
    """One line per measure, in milliseconds."""
    print(f"{'measure':<34} {'n':>4} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}  (ms)", file=file)
    for name, s in rows:
        print(f"{name:<34} {s['n']:>4} {ms(s['p50'])} {ms(s['p90'])} {ms(s['p99'])} {ms(s['max'])} {ms(s['mean'])}",
              file=file)


# ------------------------------------------------------------------------------ the machine
def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nats_version = subprocess.run([server_binary(), "--version"], capture_output=True, text=True,
                                      timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        nats_version = "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": affinity,
        "cpu": cpu_model,
        "load_avg_1m_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "nats_server": nats_version,
        "platform": platform.platform(),
        "git_commit": commit,
    }


def cpu_seconds(pid: int | None, children: bool = False) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``), with ``children`` also
    that of its children it has waited for; NaN when unknown."""
    if not pid:
        return math.nan
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    # after the ")" that ends the command name, field 3 is index 0: utime (14), stime (15),
    # cutime (16), cstime (17)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all CPUs added up), from ``/proc/stat``."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """How much CPU the benchmark's own processes used during a run, and how much everything else
    on the machine did (a busy neighbour makes the figures worse: it is reported, not hidden)."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.t0 = time.perf_counter()
        self.ours0 = sum(cpu_seconds(p, children=True) for p in self.pids)
        self.busy0 = machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        ours = sum(cpu_seconds(p, children=True) for p in self.pids) - self.ours0
        busy = machine_busy_seconds() - self.busy0
        return {
            "wall_s": wall,
            "ours_cpu_s": ours,
            "others_cpu_s": max(busy - ours, 0.0),
            "others_share_of_machine": max(busy - ours, 0.0) / (wall * (os.cpu_count() or 1)),
        }


# ------------------------------------------------------------------------------ job files
def trivial_job_files(root: Path) -> tuple[Path, Path]:
    """A code folder with a boot file that prints one line and exits 0, and a tiny data folder."""
    code = root / "code"
    data = root / "data"
    code.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    (code / "boot.py").write_text(BOOT_FILE)
    (data / "rows.csv").write_text("x,y\n1,2\n")
    return code, data


def trivial_job(name: str, code: Path, data: Path, output: Path, logs: Path) -> dict[str, Any]:
    """A valid job request (the public JSON shape) for the trivial boot file."""
    return {
        "name": name,
        "description": "benchmark: a boot file that prints one line",
        "data": [{"path": str(data)}],
        "algorithm": {"source": "framework", "engine": "scikit-learn", "engine_version": "1.5",
                      "code_dir": str(code), "boot_file": "boot.py"},
        "parameters": {},
        "output_path": str(output),
        "log_path": str(logs),
        "resources": {"pool": "cpu", "node_count": 1},
    }


# ------------------------------------------------------------------------------ leftovers
def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def leftover_processes(marker: Path, pids: Iterable[int] = ()) -> list[str]:
    """Live processes among ``pids``, or whose command line or environment mentions ``marker``
    (the benchmark's temporary directory).  Zombies already reaped by nobody count as gone."""
    me = os.getpid()
    wanted = {p for p in pids if p}
    needle = str(marker).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        status = _read(entry / "stat")
        if not status or b") Z" in status:
            continue
        cmdline = _read(entry / "cmdline")
        if pid in wanted or needle in cmdline or needle in _read(entry / "environ"):
            words = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append(f"{pid} {words}")
    return found


def report_leftovers(marker: Path, pids: Iterable[int]) -> bool:
    """Print what is left (if anything); True when nothing is."""
    left = leftover_processes(marker, pids)
    if left:
        print("LEFTOVER PROCESSES:", *left, sep="\n  ", file=sys.stderr)
        return False
    print("no leftover processes", file=sys.stderr)
    return True


def cancel_on_signals() -> None:
    """Make SIGTERM and SIGINT cancel the running main task, so that its ``finally`` stops what
    the benchmark started and removes its temporary directory."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)


# ------------------------------------------------------------------------------ results
def write_result(path: str | None, result: dict[str, Any]) -> None:
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    print(f"result written to {out}", file=sys.stderr)
