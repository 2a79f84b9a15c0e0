"""A client of the public contract, on plain nats-py (no service code): what the CLI uses and
what an integration looks like."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoServersError

from trainmaster import jobfeed
from trainmaster.auth.credentials import connect_options, inbox_options
from trainmaster.topology import Topology

TERMINAL = {"Succeeded", "Failed", "Stopped"}
# the longest a feed is silent before the client gives up: job-intake sends a keepalive at least
# every TM_FOLLOW_KEEPALIVE_S (20 s)
FEED_SILENCE_S = 60.0


class ApiError(Exception):
    """An error reply: ``code``, ``message`` and ``details`` [{field, code, message}]."""

    def __init__(self, error: dict[str, Any], job: dict[str, Any] | None = None) -> None:
        super().__init__(error.get("message", "error"))
        self.code: str = error.get("code", "error")
        self.details: list[dict[str, str]] = error.get("details", [])
        self.job = job


class NotAdmitted(Exception):
    """The servers refused this client's identity: no creds, creds another authority signed, or
    expired ones (nats-server says only that much)."""


def _refusal(exc: Exception | None) -> bool:
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


class Client:
    def __init__(self, nats_url: str, prefix: str = "tm", timeout: float = 30.0, creds: Path | None = None,
                 ca_file: Path | None = None) -> None:
        """``creds``: a NATS creds file, this client's identity on the bus; ``ca_file``: the CA that
        signs the servers' TLS certificates (unset: the system's)."""
        self.nats_url = nats_url
        self.creds = creds
        self.ca_file = ca_file
        self.topo = Topology(prefix=prefix)
        self.timeout = timeout
        self.nc: NATS | None = None
        self.last_connection_error: Exception | None = None
        self.refusal: Exception | None = None  # the servers' word against this client's identity

    async def __aenter__(self) -> Client:
        try:
            self.nc = await nats.connect(self.nats_url, connect_timeout=3, max_reconnect_attempts=3,
                                         allow_reconnect=True, error_cb=self._connection_error,
                                         **connect_options(self.creds, self.ca_file),
                                         **inbox_options(self.creds))  # a person's replies: its own inboxes
        except NoServersError:
            if self.refusal is not None:
                raise NotAdmitted(str(self.refusal)) from None
            raise
        return self

    async def _connection_error(self, exc: Exception) -> None:
        """nats-py's default prints a traceback per failed try; the caller gets the final error
        (NoServersError) raised from ``connect`` instead, and a reconnect is not worth a word.  A
        refusal is kept apart: the tries after it fail on the socket the server closed."""
        self.last_connection_error = exc
        if _refusal(exc):
            self.refusal = exc

    async def __aexit__(self, *exc: object) -> None:
        if self.nc is not None:
            await self.nc.drain()

    async def _request(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> Any:
        assert self.nc is not None
        reply = await self.nc.request(subject, payload, timeout=self.timeout, headers=headers)
        body = json.loads(reply.data)
        if isinstance(body, dict) and "error" in body:
            raise ApiError(body["error"], body.get("job"))
        return body

    async def create(self, spec: dict[str, Any] | bytes, request_id: str | None = None) -> dict[str, Any]:
        payload = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
        headers = {"Nats-Msg-Id": request_id or f"cli-{uuid.uuid4()}"}
        return await self._request(self.topo.jobs("create"), payload, headers)

    async def submit(self, spec: dict[str, Any], request_id: str) -> None:
        """Fire-and-forget; the outcome arrives on ``tm.events.request.<request_id>``."""
        assert self.nc is not None
        await self.nc.jetstream().publish(self.topo.jobs_submit, json.dumps(spec).encode(),
                                          headers={"Nats-Msg-Id": request_id})

    async def get(self, job_id: str) -> dict[str, Any]:
        return await self._request(self.topo.jobs("get"), json.dumps({"id": job_id}).encode())

    async def list(self, status: str | None = None, name: str | None = None, limit: int = 50,
                   offset: int = 0) -> dict[str, Any]:
        query: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            query["status"] = status
        if name:
            query["name"] = name
        return await self._request(self.topo.jobs("list"), json.dumps(query).encode())

    async def stop(self, job_id: str, reason: str = "stopped by user") -> dict[str, Any]:
        return await self._request(self.topo.jobs("stop"), json.dumps({"id": job_id, "reason": reason}).encode())

    async def audit(self, project: str | None = None, since: float | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` audit entries (of ``project``, since ``since``), oldest first."""
        query: dict[str, Any] = {"limit": limit}
        if project:
            query["project"] = project
        if since is not None:
            query["since"] = since
        return (await self._request(self.topo.audit_list, json.dumps(query).encode()))["entries"]

    async def agents(self) -> list[dict[str, Any]]:
        return (await self._request(self.topo.agents_list, b"{}"))["agents"]

    @property
    def topics(self) -> TopicsClient:
        """The topics API (notifications): ``await client.topics.create("ml-team")``."""
        return TopicsClient(self)

    # ---- plan, new versions, registries (see RegistryClient below)
    async def plan(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The dry run: ``{"spec", "valid", "violations", "warnings", "price_per_hour", ...}``."""
        return await self._request(self.topo.jobs("plan"), json.dumps(spec).encode())

    async def new_version(self, name: str, overrides: dict[str, Any] | None = None, dry_run: bool = False,
                          request_id: str | None = None) -> dict[str, Any]:
        body = {"name": name, "overrides": overrides or {}, "dry_run": dry_run}
        headers = None if dry_run else {"Nats-Msg-Id": request_id or f"cli-{uuid.uuid4()}"}
        return await self._request(self.topo.jobs("new_version"), json.dumps(body).encode(), headers)

    @property
    def registry(self) -> RegistryClient:
        """Templates, datasets, accounts and preset algorithms: ``await client.registry.call("datasets", "list")``."""
        return RegistryClient(self)

    async def feed(self, verb: str, query: dict[str, Any]) -> AsyncIterator[Msg]:
        """The messages of a streamed verb (``tm.jobs.events``, ``tm.jobs.logs``): see ``feed``."""
        assert self.nc is not None
        async for msg in feed(self.nc, self.topo.jobs(verb), query, max(self.timeout, FEED_SILENCE_S)):
            yield msg

    async def events(self, job_id: str, follow: bool = True) -> AsyncIterator[dict[str, Any]]:
        """The job's CloudEvents from its first; with ``follow`` until it has ended."""
        async for msg in self.feed("events", {"id": job_id, "follow": follow}):
            yield json.loads(msg.data)

    async def log_lines(self, job_id: str, follow: bool = False, node: int | None = None,
                        tail: int | None = None) -> AsyncIterator[LogLine]:
        """The job's log lines (of ``node``, else of every node; the last ``tail`` of them); with
        ``follow`` the new ones too, until the job has ended and its last lines came."""
        query: dict[str, Any] = {"id": job_id, "follow": follow}
        if node is not None:
            query["node"] = node
        if tail is not None:
            query["tail"] = tail
        async for msg in self.feed("logs", query):
            headers = msg.headers or {}
            yield LogLine(headers.get(jobfeed.NODE, ""), msg.data.decode("utf-8", "replace"),
                          headers.get(jobfeed.LOG_STREAM, ""), int(headers[jobfeed.SEQ]))

    async def logs(self, job_id: str, follow: bool = False) -> AsyncIterator[tuple[str, str]]:
        """(node, line) pairs of every node; ``follow``: until the job has ended."""
        async for line in self.log_lines(job_id, follow):
            yield line.node, line.text


async def feed(nc: NATS, subject: str, query: dict[str, Any], silence_s: float = FEED_SILENCE_S,
               headers: dict[str, str] | None = None, keepalives: bool = False) -> AsyncIterator[Msg]:
    """The messages of a streamed verb (``tm.jobs.events``, ``tm.jobs.logs`` on ``subject``): each
    stored event or line, its stream sequence in ``Tm-Seq``, until ``Tm-End``; on ``more``
    (job-intake's window ran out, or the replica stopped) asked again from where it got.  An error
    reply is raised as ``ApiError``; keepalives are skipped (``keepalives``: passed on too).
    ``headers`` go with each request."""
    after = int(query.get("after", 0))
    while True:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            await nc.publish(subject, json.dumps({**query, "after": after}).encode(), reply=inbox, headers=headers)
            while True:
                msg = await sub.next_msg(timeout=silence_s)
                msg_headers = msg.headers or {}
                if msg_headers.get("Status") == "503":
                    raise nats.errors.NoRespondersError
                if jobfeed.KEEPALIVE in msg_headers:
                    if keepalives:
                        yield msg
                    continue
                end = msg_headers.get(jobfeed.END)
                if end == jobfeed.DONE:
                    return
                if end == jobfeed.MORE:
                    after = int(msg_headers[jobfeed.NEXT])
                    break
                if jobfeed.SEQ not in msg_headers:
                    body = json.loads(msg.data)
                    raise ApiError(body.get("error", {}) if isinstance(body, dict) else {})
                after = int(msg_headers[jobfeed.SEQ])
                yield msg
        finally:
            await sub.unsubscribe()


@dataclass(frozen=True)
class LogLine:
    node: str
    text: str
    stream: str  # stdout, stderr, or trainmaster (the agent's own lines)
    seq: int  # where it is in the log stream: ``after`` to go on from it


# ================================================================ notifications
# Topics and subscriptions through ``tm.topics.<verb>`` (answered by the notifier).
class TopicsClient:
    """``Client(...).topics``: create/list/get/delete topics, subscribe webhooks and email,
    list subscriptions and deliveries."""

    def __init__(self, client: Client) -> None:
        self.c = client

    async def _call(self, verb: str, body: dict[str, Any]) -> Any:
        return await self.c._request(self.c.topo.topics(verb), json.dumps(body).encode())

    async def create(self, name: str, description: str = "", project: str = "default") -> dict[str, Any]:
        """A topic of ``project`` (its members manage it; only its jobs may name it)."""
        return await self._call("create", {"name": name, "description": description, "project": project})

    async def list(self) -> list[dict[str, Any]]:
        return (await self._call("list", {}))["topics"]

    async def get(self, name: str) -> dict[str, Any]:
        return await self._call("get", {"name": name})

    async def delete(self, name: str, force: bool = False) -> dict[str, Any]:
        return await self._call("delete", {"name": name, "force": force})

    async def subscribe(self, topic: str, protocol: str, endpoint: str, secret: str | None = None) -> dict[str, Any]:
        """The new subscription; for a webhook its ``secret`` is in this reply only."""
        body: dict[str, Any] = {"topic": topic, "protocol": protocol, "endpoint": endpoint}
        if secret is not None:
            body["secret"] = secret
        return await self._call("subscribe", body)

    async def unsubscribe(self, topic: str, subscription_id: str) -> dict[str, Any]:
        return await self._call("unsubscribe", {"topic": topic, "subscription_id": subscription_id})

    async def subscriptions(self, topic: str) -> list[dict[str, Any]]:
        return (await self._call("subscriptions", {"name": topic}))["subscriptions"]

    async def deliveries(self, topic: str, dead: bool = False, limit: int = 100) -> dict[str, Any]:
        return await self._call("deliveries", {"topic": topic, "dead": dead, "limit": limit})


# ================================================================ registries
class RegistryClient:
    """``tm.{templates,datasets,accounts,algorithms}.<verb>`` (answered by job-intake)."""

    def __init__(self, client: Client) -> None:
        self.c = client

    async def call(self, registry: str, verb: str, body: dict[str, Any] | None = None) -> Any:
        subject = getattr(self.c.topo, registry)(verb)
        return await self.c._request(subject, json.dumps(body or {}).encode())

