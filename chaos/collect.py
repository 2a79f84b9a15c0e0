"""Turn what the stack left behind into an ``Observation``: the events stream (job and request
events), the job records (``tm.jobs.get``), the account's ledger (``tm.accounts.get``), the boot
file's node run records, the webhook receiver's receipts and the processes left after teardown."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy

from chaos.model import TERMINAL, JobEvent, NodeRun, RecordView, Submission
from trainmaster.topology import Topology


def event_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def read_events(nc: NATS, topo: Topology, timeout_s: float = 30.0) -> tuple[list[JobEvent], dict[str, Any]]:
    """Every job event and request event stored in TM_EVENTS, read from the first with an
    ordered consumer (what any client does); returns (job events, request id -> request event)."""
    js = nc.jetstream(timeout=10)
    info = await js.stream_info(topo.stream_events.name)
    last = info.state.last_seq
    events: list[JobEvent] = []
    requests: dict[str, Any] = {}
    if info.state.messages == 0:
        return events, requests
    sub = await js.subscribe(f"{topo.prefix}.events.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while loop.time() < deadline:
            try:
                msg = await sub.next_msg(timeout=2)
            except (TimeoutError, NatsTimeoutError):
                continue
            body = json.loads(msg.data)
            data = body.get("data") or {}
            seq = msg.metadata.sequence.stream
            if msg.subject.startswith(f"{topo.prefix}.events.request."):
                requests.setdefault(data.get("request_id", ""), body)
            elif "job_id" in data:
                events.append(JobEvent(body["id"], data["job_id"], body["type"], data.get("status", ""),
                                       event_time(body["time"]), seq))
            if seq >= last:
                break
        else:
            raise TimeoutError(f"read {len(events)} events, not up to sequence {last}")
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return events, requests


def resolve(submissions: list[Submission], requests: dict[str, Any]) -> list[Submission]:
    """Attach the job id (or the rejection) from each request's event."""
    out = []
    for sub in submissions:
        body = requests.get(sub.request_id)
        data = (body or {}).get("data") or {}
        job = data.get("job") or {}
        error = data.get("error") or {}
        out.append(Submission(sub.request_id, sub.kind, sub.acked_at, job.get("id"),
                              error.get("code") if body and not job else None))
    return out


async def request(nc: NATS, subject: str, body: dict, attempts: int = 10) -> Any:
    for attempt in range(attempts):
        try:
            return json.loads((await nc.request(subject, json.dumps(body).encode(), timeout=5)).data)
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(1)
    return None


async def read_records(nc: NATS, topo: Topology, job_ids: list[str]) -> dict[str, RecordView]:
    sem = asyncio.Semaphore(16)

    async def one(job_id: str) -> RecordView | None:
        async with sem:
            record = await request(nc, topo.jobs("get"), {"id": job_id})
        if not isinstance(record, dict) or "error" in record:
            return None
        ran = any(h.get("status") == "Running" for h in record.get("history", []))
        return RecordView(job_id, record["status"], ran, record.get("billing") is not None,
                          bool((record.get("spec") or {}).get("subscription")))

    found = await asyncio.gather(*(one(j) for j in job_ids))
    return {r.job_id: r for r in found if r is not None}


async def read_charges(nc: NATS, topo: Topology, account: str = "default") -> dict[str, int]:
    reply = await request(nc, topo.accounts("get"), {"name": account})
    charges: dict[str, int] = {}
    for entry in (reply or {}).get("ledger", []):
        if entry.get("kind") == "charge" and entry.get("job_id"):
            charges[entry["job_id"]] = charges.get(entry["job_id"], 0) + 1
    return charges


def read_node_runs(runs: Path) -> list[NodeRun]:
    out = []
    for path in sorted(runs.glob("*.json")):
        with contextlib.suppress(ValueError, OSError, KeyError):
            r = json.loads(path.read_text())
            out.append(NodeRun(r["job_id"], int(r["attempt"]), int(r["node"]), int(r["pid"]), float(r["start"]),
                               r["end"], bool(r["clash"])))
    return out


def ended(events: list[JobEvent], job_ids: set[str]) -> set[str]:
    return {e.job_id for e in events if e.status in TERMINAL and e.job_id in job_ids}
