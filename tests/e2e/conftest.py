"""Fixtures of the end-to-end tests that run ``trainmaster up`` (tests/e2e/up_harness.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from support import eventually
from up_harness import Up, connected

from trainmaster.auth.local import LocalAuth
from trainmaster.client import Client


@pytest.fixture
def stacks() -> Iterator[list[Up]]:
    started: list[Up] = []
    try:
        yield started
    finally:
        for up in started:
            up.kill()


@pytest.fixture
async def client_of() -> AsyncIterator:
    opened: list[Client] = []

    async def open_client(up: Up) -> Client:
        client = Client(up.url, timeout=10, creds=LocalAuth(up.data_dir).admin_creds)
        await eventually(lambda: connected(client), 60, 0.2, what="a connection to the stack's NATS")
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)
