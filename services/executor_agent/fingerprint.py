"""What this host offers: CPUs, memory, GPUs, plus the agent's pool labels.

The parse functions are pure (text in, values out) so they are unit-tested on captured output;
``probe_host`` is the small adapter that reads ``/proc/meminfo`` and runs ``nvidia-smi``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from trainmaster.messages import GpuInfo

NVIDIA_SMI_QUERY = ["--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class HostFacts:
    host: str
    cpus: int
    memory_mb: int
    gpus: list[GpuInfo]


def parse_meminfo(text: str) -> int:
    """``MemTotal`` of ``/proc/meminfo`` in MiB (the kernel writes it in KiB)."""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == "MemTotal":
            fields = rest.split()
            if not fields:
                break
            value = int(fields[0])
            unit = fields[1].lower() if len(fields) > 1 else "kb"
            if unit != "kb":
                raise ValueError(f"unexpected MemTotal unit {fields[1]!r}")
            return value // 1024
    raise ValueError("no MemTotal line in meminfo")


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Rows of ``nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits``,
    e.g. ``0, NVIDIA H100 80GB HBM3, 81559``.  Raises ``ValueError`` on a row it cannot read."""
    gpus: list[GpuInfo] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        # the index is the first field and the memory the last; split from both ends so that
        # a model name with a comma in it still parses
        index, sep1, rest = line.partition(",")
        model, sep2, memory = rest.rpartition(",")
        if not (sep1 and sep2):
            raise ValueError(f"unexpected nvidia-smi row: {line!r}")
        memory = memory.strip()
        try:
            # "[N/A]" (e.g. some MIG or virtual setups) means unknown memory, not an unusable GPU
            memory_mb = 0 if memory.startswith("[") else int(float(memory))
            gpus.append(GpuInfo(index=int(index.strip()), model=model.strip(), memory_mb=memory_mb))
        except ValueError as exc:
            raise ValueError(f"unexpected nvidia-smi row: {line!r}") from exc
    return gpus


def parse_labels(text: str) -> dict[str, str]:
    """``TM_AGENT_LABELS``: ``"k=v,k2=v2"``; blanks around items are ignored."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label {item.strip()!r} is not of the form key=value")
        labels[key.strip()] = value.strip()
    return labels


# ------------------------------------------------------------------------------- adapter
def probe_gpus(log: structlog.stdlib.BoundLogger, timeout_s: float = 15.0) -> list[GpuInfo]:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        done = subprocess.run([binary, *NVIDIA_SMI_QUERY], capture_output=True, text=True,
                              timeout=timeout_s, check=True)
        return parse_nvidia_smi(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        # a broken driver must not keep the agent from offering its CPUs
        log.warning("nvidia-smi failed; offering no GPUs", error=f"{type(exc).__name__}: {exc}")
        return []


def probe_memory_mb(log: structlog.stdlib.BoundLogger, meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        return parse_meminfo(meminfo.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read the memory size", error=f"{type(exc).__name__}: {exc}")
        return 0


def probe_host(log: structlog.stdlib.BoundLogger) -> HostFacts:
    return HostFacts(
        host=socket.gethostname(),
        cpus=os.cpu_count() or 1,
        memory_mb=probe_memory_mb(log),
        gpus=probe_gpus(log),
    )
