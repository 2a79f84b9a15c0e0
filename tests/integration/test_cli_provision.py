"""``trainmaster provision`` against a real nats-server: every stream, bucket and consumer of the
topology is made (and making them again changes nothing)."""

from __future__ import annotations

import asyncio

import nats
import pytest
from typer.testing import CliRunner

from trainmaster.cli.main import app
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration


def test_provision_makes_the_whole_topology(nats_server: str) -> None:
    topo = Topology()
    for _ in range(2):  # idempotent
        result = CliRunner().invoke(app, ["provision", "--nats-url", nats_server])
        assert result.exit_code == 0, result.output
        assert f"provisioned {len(topo.streams)} streams" in result.output
    asyncio.run(check_topology(nats_server, topo))


async def check_topology(url: str, topo: Topology) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        streams = {s.config.name for s in await js.streams_info()}
        assert {s.name for s in topo.streams} <= streams
        for bucket in topo.buckets:
            await js.key_value(bucket.name)
    finally:
        await nc.close()
