"""The log sink's size limit: past it one marker line, the rest dropped (but counted), and a last
marker with the count when the node ends; the agent's own lines are marked ``trainmaster``."""

from __future__ import annotations

from pathlib import Path

import structlog

from services.executor_agent.launch import RunKey
from services.executor_agent.runner import LogSink


async def test_lines_past_the_limit_are_dropped_with_markers(tmp_path: Path) -> None:
    published: list[tuple[str, str, bytes]] = []

    async def publish(body: bytes, subject: str, headers: dict[str, str]) -> None:
        published.append((headers["Tm-Line"], headers["Tm-Stream"], body))

    file = tmp_path / "node0.log"
    sink = LogSink(key=RunKey("job-1", 1, 0), subject="tm.logs.job-1.0", publish=publish, file=file,
                   header="# header", log=structlog.get_logger(), limit_bytes=100)
    sink.note("staged 1/1 files")
    for i in range(50):
        await sink.write("stdout", f"line {i:04d}".encode())  # 9 bytes + newline each
    await sink.close(5)

    text = file.read_text().splitlines()
    assert text[0] == "# header" and text[1] == "[trainmaster] staged 1/1 files"
    assert text[2:12] == [f"line {i:04d}" for i in range(10)]  # 10 lines = exactly 100 bytes
    assert text[12] == ("[trainmaster] log truncated after 100 bytes (this node's share of the job's log limit); "
                        "further lines are dropped")
    assert text[13] == "[trainmaster] log truncated after 100 bytes; 40 more lines dropped"
    assert len(text) == 14
    assert sink.truncated and sink.dropped == 40
    # the subject carries the same lines, numbered without gaps; the agent's lines are marked
    assert [int(n) for n, _, _ in published] == list(range(1, 14))
    streams = [stream for _, stream, _ in published]
    assert streams[0] == "trainmaster" and streams[1:11] == ["stdout"] * 10 and streams[11:] == ["trainmaster"] * 2
    assert published[-1][2] == b"[trainmaster] log truncated after 100 bytes; 40 more lines dropped"


async def test_without_a_limit_nothing_is_dropped(tmp_path: Path) -> None:
    async def publish(body: bytes, subject: str, headers: dict[str, str]) -> None:
        pass

    sink = LogSink(key=RunKey("job-1", 1, 0), subject="s", publish=publish, file=tmp_path / "x.log", header="#",
                   log=structlog.get_logger())
    for i in range(1000):
        await sink.write("stderr", b"y" * i)
    await sink.close(5)
    assert not sink.truncated and sink.lines == 1000
