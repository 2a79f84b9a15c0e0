"""The agent's host fingerprint: parsing of ``/proc/meminfo``, ``nvidia-smi`` and labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from services.executor_agent import fingerprint
from services.executor_agent.fingerprint import parse_labels, parse_meminfo, parse_nvidia_smi
from trainmaster.messages import GpuInfo

MEMINFO = """\
MemTotal:       131897432 kB
MemFree:        98312724 kB
MemAvailable:   120455320 kB
Buffers:          812340 kB
"""


def test_meminfo_total_in_mib() -> None:
    assert parse_meminfo(MEMINFO) == 131897432 // 1024


def test_meminfo_total_need_not_be_first() -> None:
    assert parse_meminfo("MemFree: 1 kB\nMemTotal: 2048 kB\n") == 2


@pytest.mark.parametrize("text", ["", "MemFree: 1 kB\n", "MemTotal:\n", "MemTotal: 12 MB\n", "MemTotal: x kB\n"])
def test_meminfo_without_a_usable_total_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_meminfo(text)


def test_meminfo_of_this_host() -> None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo here")
    assert parse_meminfo(meminfo.read_text()) > 0


def test_nvidia_smi_rows() -> None:
    text = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, 81559\n"
    assert parse_nvidia_smi(text) == [
        GpuInfo(index=0, model="NVIDIA H100 80GB HBM3", memory_mb=81559),
        GpuInfo(index=1, model="NVIDIA H100 80GB HBM3", memory_mb=81559),
    ]


def test_nvidia_smi_no_gpus_and_blank_lines() -> None:
    assert parse_nvidia_smi("") == []
    assert parse_nvidia_smi("\n  \n") == []


def test_nvidia_smi_name_with_a_comma_and_unknown_memory() -> None:
    assert parse_nvidia_smi("3, Some GPU, Rev 2, [N/A]\r\n") == [GpuInfo(index=3, model="Some GPU, Rev 2", memory_mb=0)]


@pytest.mark.parametrize("text", [
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
    "x, Tesla T4, 15360",
    "0, Tesla T4, lots",
])
def test_nvidia_smi_garbage_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nvidia_smi(text)


def test_probe_gpus_failure_means_no_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a stand-in nvidia-smi that prints what a broken driver prints
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert fingerprint.probe_gpus(structlog.get_logger()) == []


def test_probe_gpus_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert fingerprint.probe_gpus(structlog.get_logger()) == []


def test_labels() -> None:
    assert parse_labels("") == {}
    assert parse_labels("zone=a, disk = ssd ,") == {"zone": "a", "disk": "ssd"}
    assert parse_labels("k=") == {"k": ""}
    with pytest.raises(ValueError):
        parse_labels("zone")
