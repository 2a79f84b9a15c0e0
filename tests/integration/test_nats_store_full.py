"""A nats-server whose store ran full: the stream that failed a write stays broken after space is
freed (nats-server keeps the error until it restarts, and does not exit), ``/healthz`` says so,
and ``nats_health.needs_restart`` asks for the restart that heals it — only once there is room."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from trainmaster.nats_health import needs_restart, store_write_error
from trainmaster.natsd import NatsServer

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs (the suite runs as root, as CI does: `.ci/run`)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (run the tests as root, as .ci/run does): {done.stderr.decode()}",
                    pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    stats = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"x" * (stats.f_bavail * stats.f_frsize - 4096))
    return filler


async def publish_ok(url: str, subject: str) -> bool:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(subject, b"after", timeout=2)
        return True
    except Exception:
        return False
    finally:
        await nc.close()


async def test_a_store_write_error_is_reported_and_healed_by_a_restart(small_disk: Path, tmp_path: Path) -> None:
    server = NatsServer(store_dir=small_disk / "store", port=-1, log_file=tmp_path / "nats.log")
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="JOBS", subjects=["jobs.>"]))
        filler = fill(small_disk)
        for _ in range(50):  # until the store has failed a write
            try:
                await js.publish("jobs.x", b"y" * 4000, timeout=0.5)
            except Exception:
                break
        assert store_write_error(server.monitor_url) is not None
        assert needs_restart(server.monitor_url, server.store_dir) is None, "no restart while the disk is full"
        await nc.close()

        filler.unlink()
        await asyncio.sleep(0.5)
        assert not await publish_ok(server.url, "jobs.x"), "nats-server heals by itself now: drop the watchdog"
        reason = needs_restart(server.monitor_url, server.store_dir)
        assert reason is not None and "write error" in reason

        server.stop()
        server.start()
        assert await publish_ok(server.url, "jobs.x")
        assert store_write_error(server.monitor_url) is None
    finally:
        server.stop()
