"""Shell: pull requests on a durable JetStream consumer whose messages go straight to a callback.

Why not nats-py's ``PullSubscription.fetch``: it hands each message over through ``next_msg``,
which makes a task, a timer and a uuid per message, and it asks again after every batch.  Here
one pull request (``batch`` messages, lingering ``expires_s`` when there are none) is open at a
time; its messages are given to ``on_msg`` as they arrive, and the request is over when all its
messages came, the server ends it (404/408/409 status), or ``expires_s`` plus a margin passed
without either (a reconnect can lose the server's answer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

_STATUS = "Status"
_HEARTBEAT = "100"
_LOST_REQUEST_MARGIN_S = 1.0  # a request lost to a server restart holds the pulling up no longer


class Puller:
    def __init__(self, nc: NATS, js: JetStreamContext, stream: str, durable: str, on_msg: Callable[[Msg], None],
                 expires_s: float = 1.0) -> None:
        prefix = getattr(js, "_prefix", "$JS.API")  # "$JS.<domain>.API" for a JetStream domain
        self.nc = nc
        self.subject = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self.on_msg = on_msg
        self.expires_s = expires_s
        self.outstanding = 0  # messages the open request may still bring
        self.idle = asyncio.Event()  # no request open
        self.idle.set()
        self.guard: asyncio.TimerHandle | None = None
        self.sub = None

    async def start(self) -> Puller:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._received)
        return self

    async def request(self, batch: int) -> None:
        """Open a request for up to ``batch`` messages (the previous one must be over)."""
        self.outstanding = batch
        self.idle.clear()
        self.guard = asyncio.get_running_loop().call_later(self.expires_s + _LOST_REQUEST_MARGIN_S, self._over)
        body = json.dumps({"batch": batch, "expires": int(self.expires_s * 1e9)}).encode()
        try:
            await self.nc.publish(self.subject, body, reply=self.inbox)
        except BaseException:
            self._over()
            raise

    async def _received(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers and not msg.data else None
        if status is None:
            self.on_msg(msg)
            if self.outstanding > 0:  # else: a late message of a request given up on
                self.outstanding -= 1
                if not self.outstanding:
                    self._over()
        elif status != _HEARTBEAT:
            self._over()  # 404 no messages, 408 expired, 409 the consumer changed or is full: ask again

    def _over(self) -> None:
        if self.guard is not None:
            self.guard.cancel()
            self.guard = None
        self.outstanding = 0
        self.idle.set()

    async def stop(self) -> None:
        if self.guard is not None:
            self.guard.cancel()
        if self.sub is not None:
            await self.sub.unsubscribe()
