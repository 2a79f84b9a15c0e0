"""The services, as api-gateway asks them: one request on the bus per HTTP request, sent with
the caller's API token in ``Tm-Token`` so that the service answers as the token's user (never as
the gateway, whose service credentials are the cluster admin's; trainmaster.identity)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from services.api_gateway import problems
from services.api_gateway.problems import Problem
from trainmaster import client, jobfeed
from trainmaster.access import ON_BEHALF


def unanswered(subject: str, exc: Exception) -> Problem:
    if isinstance(exc, NoRespondersError):
        return Problem("unavailable", f"no service answers {subject}: is it running?")
    return Problem("timeout", f"no answer to {subject} in time: the service is busy or down; try again")


class Upstream:
    def __init__(self, nc: NATS, timeout_s: float) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def ask(self, subject: str, body: bytes, token: str, headers: dict[str, str] | None = None) -> bytes:
        """The reply's body; an error reply raised as its ``Problem``."""
        try:
            msg = await self.nc.request(subject, body, timeout=self.timeout_s,
                                        headers={**(headers or {}), ON_BEHALF: token})
        except (NoRespondersError, NatsTimeoutError, TimeoutError) as exc:
            raise unanswered(subject, exc) from None
        problem = problems.of_reply(msg.data)
        if problem is not None:
            raise problem
        return msg.data

    async def feed(self, subject: str, query: dict[str, Any], token: str) -> AsyncIterator[Msg]:
        """The messages of a streamed verb, keepalives included (the SSE stream passes them on);
        an error reply raised as its ``Problem``."""
        try:
            async for msg in client.feed(self.nc, subject, query, headers={ON_BEHALF: token}, keepalives=True):
                yield msg
        except client.ApiError as exc:
            raise Problem(exc.code, str(exc), exc.details) from None
        except (NoRespondersError, NatsTimeoutError, TimeoutError) as exc:
            raise unanswered(subject, exc) from None


def is_keepalive(msg: Msg) -> bool:
    return jobfeed.KEEPALIVE in (msg.headers or {})
