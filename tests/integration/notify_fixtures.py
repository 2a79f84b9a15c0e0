"""What the notifier's integration tests share: real webhook receivers (aiohttp on 127.0.0.1,
verifying every delivery with the official ``standardwebhooks`` package), the notifier as a real
subprocess with a compressed retry schedule, and jobs/events written the way the services do.

Fixtures (``nats_server``, ``services``) come from tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from standardwebhooks import Webhook, WebhookVerificationError
from support import ServiceProcess, Services, settled

from trainmaster.client import Client
from trainmaster.messages import (
    HistoryEntry,
    JobCloudEvent,
    JobEventData,
    JobRecord,
    JobRequest,
    Status,
    Subscription,
    encode,
)
from trainmaster.topology import Topology

TOPO = Topology()
ALL_EVENTS = ["OnJobRunning", "OnJobSucceeded", "OnJobFailed", "OnJobStopped"]

# the notifier under test: loopback receivers allowed, a schedule of 3 attempts within 0.6 s,
# 1 s HTTP timeout, and a 4 s ack wait so a killed notifier's unfinished deliveries come back fast
FAST_ENV = {
    "TM_WEBHOOK_ALLOW_PRIVATE": "true",
    "TM_WEBHOOK_RETRY_SCHEDULE_S": "0,0.2,0.4",
    "TM_WEBHOOK_TIMEOUT_S": "1",
    "TM_SMTP_TIMEOUT_S": "2",
    "TM_NOTIFY_ACK_WAIT_S": "4",
}


# ------------------------------------------------------------------------------ receivers
@dataclass
class Delivery:
    path: str
    webhook_id: str
    body: bytes
    headers: dict[str, str]
    verified: bool
    received_at: float


Behaviour = Callable[[int], Any]  # n-th request (1-based) to a path -> status code, or ("sleep", s, code)


@dataclass
class Receiver:
    """Webhook endpoints ``/<name>`` on one aiohttp server.  ``secrets[name]`` verifies each
    delivery with ``standardwebhooks.Webhook``; ``behave[name]`` decides the answer."""

    url: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    behave: dict[str, Behaviour] = field(default_factory=dict)
    seen: list[Delivery] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def endpoint(self, name: str) -> str:
        return f"{self.url}/{name}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.read()
        headers = dict(request.headers)
        n = self.counts[name] = self.counts.get(name, 0) + 1
        verified = False
        if name in self.secrets:
            try:
                Webhook(self.secrets[name]).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        self.seen.append(Delivery(name, headers.get("webhook-id", ""), body, headers, verified, time.time()))
        answer = self.behave.get(name, lambda _n: 200)(n)
        if isinstance(answer, tuple):
            _, seconds, answer = answer
            await asyncio.sleep(seconds)
        if 300 <= answer < 400:
            return web.Response(status=answer, headers={"Location": self.endpoint(f"{name}-redirected")})
        return web.Response(status=answer, text="ok")

    def of(self, name: str) -> list[Delivery]:
        return [d for d in self.seen if d.path == name]


# ------------------------------------------------------------------------------ the notifier
async def start_notifier(services: Services, nats_url: str, env: dict[str, str] | None = None) -> ServiceProcess:
    """Start the notifier and wait until the topics API answers and the sender pulls."""
    [svc] = await services.astart(nats_url, "notifier", env={**FAST_ENV, **(env or {})})
    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                await nc.request(TOPO.topics("list"), b"{}", timeout=1)
                spec = TOPO.consumer_notify_deliver
                if (await nc.jetstream().consumer_info(spec.stream, spec.durable)).num_waiting > 0:
                    return svc
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError, NotFoundError):
                pass
            if time.monotonic() > deadline or not svc.alive():
                raise RuntimeError(f"notifier not ready; its log:\n{svc.tail()}")
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


# ------------------------------------------------------------------------------ jobs and events
def job_record(job_id: str, topic: str, events: list[str] | None = None, name: str = "nt-job") -> JobRecord:
    spec = JobRequest(name=name, output_path=f"/srv/out/{name}", log_path=f"/srv/logs/{name}",
                      subscription=Subscription(topic=topic, events=events or ALL_EVENTS))
    now = time.time()
    return JobRecord(id=job_id, name=name, version="V001", status=Status.INITIALIZING, spec=spec,
                     request_id=f"req-{job_id}", created_at=now, updated_at=now,
                     history=[HistoryEntry(0, now, "submitted", Status.INITIALIZING, "submitted")])


async def put_job(nc: NATS, record: JobRecord) -> None:
    kv = await nc.jetstream().key_value(TOPO.bucket_jobs.name)
    await kv.put(record.id, encode(record))


def job_event(record: JobRecord, seq: int, status: Status, previous: Status, reason: str | None = None,
              exit_code: int | None = None) -> JobCloudEvent:
    return JobCloudEvent(
        id=f"{record.id}.{seq}", source="trainmaster/test", type=f"tm.job.{status.value.lower()}",
        subject=record.id, time=datetime.now(UTC).isoformat(),
        data=JobEventData(job_id=record.id, name=record.name, version=record.version, status=status,
                          previous_status=previous, change="test", reason=reason, exit_code=exit_code,
                          output_path=record.spec.output_path, log_path=record.spec.log_path),
    )


async def emit(nc: NATS, event: JobCloudEvent) -> None:
    """Publish a job event as JobStore does (``Nats-Msg-Id`` = the event id)."""
    await nc.jetstream().publish(TOPO.job_events(event.subject), encode(event), headers={"Nats-Msg-Id": event.id})


async def notifier_idle(nc: NATS, timeout_s: float = 30.0) -> None:
    """The notifier has handled every job event published so far (fanned out and acked) and then
    every delivery task (sent, retried or dead-lettered, and acked): with neither consumer holding
    anything pending or unacked, no further webhook can come from what was published."""
    events = TOPO.consumer_notifier
    await settled(nc, events.stream, events.durable, timeout_s=timeout_s)
    deliver = TOPO.consumer_notify_deliver
    await settled(nc, deliver.stream, deliver.durable, timeout_s=timeout_s)


async def until(check: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


def body_of(d: Delivery) -> dict[str, Any]:
    return json.loads(d.body)


async def api(nats_url: str) -> Client:
    return await Client(nats_url, timeout=10).__aenter__()
