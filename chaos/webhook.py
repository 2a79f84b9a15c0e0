"""A local webhook receiver (aiohttp): records the ``webhook-id`` and the job event id of every
POST it answers 2xx, and can be taken down and brought back (a fault)."""

from __future__ import annotations

import json
import time

from aiohttp import web

from chaos.model import Receipt


class Receiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.receipts: list[Receipt] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.receipts.append(Receipt(request.headers.get("webhook-id", ""), body.get("tmeventid", ""),
                                     (body.get("data") or {}).get("job_id", ""), time.time()))
        return web.Response(status=204)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        """Close the listening socket: connections are refused, as for a receiver that is down."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
