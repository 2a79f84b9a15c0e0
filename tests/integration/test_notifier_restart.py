"""A notifier SIGKILLed in the middle of deliveries and restarted delivers the rest, under the
same webhook-ids and with the same bodies: a receiver that dedupes on webhook-id sees each event
exactly once, and nothing is lost."""

from __future__ import annotations

import asyncio
import json

import pytest
from notify_fixtures import (
    TOPO,
    Receiver,
    api,
    emit,
    job_event,
    job_record,
    notifier_idle,
    put_job,
    start_notifier,
    until,
)

from trainmaster.messages import Status

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EVENTS = 150
SUBS = ("one", "two")


async def test_kill_mid_burst_then_restart_loses_nothing_and_doubles_nothing(nc, nats_server: str, services) -> None:
    rx = await Receiver().start()
    # slow receivers and few deliveries in flight per subscription keep the burst going for seconds
    # a short ack wait: a task the killed notifier took but never acked comes back within seconds,
    # so that waiting for the notifier to be idle before counting stays short
    env = {"TM_NOTIFY_MAX_IN_FLIGHT_PER_SUBSCRIPTION": "8", "TM_WEBHOOK_TIMEOUT_S": "2", "TM_SMTP_TIMEOUT_S": "2",
           "TM_NOTIFY_ACK_WAIT_S": "5"}
    try:
        first = await start_notifier(services, nats_server, env)
        client = await api(nats_server)
        await client.topics.create("burst")
        for name in SUBS:
            rx.secrets[name] = (await client.topics.subscribe("burst", "webhook", rx.endpoint(name)))["secret"]
            rx.behave[name] = lambda n: ("sleep", 0.05, 200)
        jobs = [job_record(f"job-k{i}", "burst", ["OnJobSucceeded"]) for i in range(EVENTS)]
        for rec in jobs:
            await put_job(nc, rec)
        await asyncio.gather(*(emit(nc, job_event(rec, 5, Status.SUCCEEDED, Status.RUNNING)) for rec in jobs))

        async def fanned_out() -> bool:  # every task is in the deliveries stream
            return (await nc.jetstream().stream_info(TOPO.stream_deliveries.name)).state.last_seq >= EVENTS * 2

        await until(fanned_out, what="the fan-out")
        await until(lambda: len(rx.seen) >= EVENTS // 2, what="a third of the deliveries")
        first.proc.kill()  # SIGKILL: no drain, deliveries in flight are cut off
        first.proc.wait(10)
        at_kill = len(rx.seen)
        assert at_kill < EVENTS * 2, "the burst was over before the kill; slow the receivers down"

        await start_notifier(services, nats_server, env)
        unique = lambda: {(d.path, d.webhook_id) for d in rx.seen}  # noqa: E731
        await until(lambda: len(unique()) >= EVENTS * len(SUBS), timeout_s=30, what="every delivery after restart")
        await notifier_idle(nc)  # every straggler (a redelivery after the kill) has arrived before counting

        print(f"seen {len(rx.seen)} deliveries, {len(unique())} unique, {at_kill} before the kill")
        assert all(d.verified for d in rx.seen)
        assert len(unique()) == EVENTS * len(SUBS)
        for name in SUBS:
            per_event = {d.webhook_id: d for d in rx.of(name)}
            events = {json_id(d) for d in per_event.values()}
            assert len(events) == EVENTS  # every job's event, once after dedupe on webhook-id
        bodies: dict[str, set[bytes]] = {}
        for d in rx.seen:
            bodies.setdefault(d.webhook_id, set()).add(d.body)
        assert all(len(b) == 1 for b in bodies.values())  # a repeated webhook-id carried the same body
        await client.__aexit__()
    finally:
        await rx.stop()


def json_id(d) -> str:
    return json.loads(d.body)["tmeventid"]
