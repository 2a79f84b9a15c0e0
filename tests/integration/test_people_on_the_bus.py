"""People on the bus: a user of the people's account, minted with its scoped signing key, reaches
the verbs the services' account exports (the responder learns who asked from the server), gets
its replies in its own inbox, several for a streamed verb, and nothing else: no other verb, no
JetStream, nobody else's replies."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from support import SecuredNats

from trainmaster import bus
from trainmaster.access import REQUEST_INFO
from trainmaster.auth.credentials import connect_options
from trainmaster.auth.permissions import user_inbox
from trainmaster.topology import Topology

pytestmark = pytest.mark.integration
TOPO = Topology()


async def test_a_person_asks_exported_verbs_as_itself_and_nothing_else(secured_nats: SecuredNats) -> None:
    service = await bus.connect(secured_nats.settings(secured_nats.service_creds()))
    seen: list[dict] = []

    async def answer_get(msg: nats.aio.msg.Msg) -> None:
        seen.append(json.loads(msg.headers[REQUEST_INFO]))
        await msg.respond(b'{"ok": true}')

    async def answer_logs(msg: nats.aio.msg.Msg) -> None:
        for i in range(3):
            await service.publish(msg.reply, f"line {i}".encode())
        await service.publish(msg.reply, b"")

    await service.subscribe(TOPO.jobs("get"), cb=answer_get)
    await service.subscribe(TOPO.jobs("logs"), cb=answer_logs)
    await service.subscribe(TOPO.jobs_submit, cb=answer_get)
    await service.flush()

    creds, key = secured_nats.person_creds("alice")
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    alice = await nats.connect(secured_nats.url, inbox_prefix=user_inbox("alice"), error_cb=on_error,
                               **connect_options(creds))
    try:
        reply = await alice.request(TOPO.jobs("get"), b'{"id": "job-x"}', timeout=5)
        assert json.loads(reply.data) == {"ok": True}
        assert seen[0]["user"] == key and seen[0]["name_tag"] == "alice"

        inbox = alice.new_inbox()
        lines = await alice.subscribe(inbox)
        await alice.publish(TOPO.jobs("logs"), b"{}", reply=inbox)
        got = [(await lines.next_msg(timeout=5)).data for _ in range(4)]
        assert got == [b"line 0", b"line 1", b"line 2", b""]

        # not exported, not in its rights: refused by the server, no answer
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await alice.request(TOPO.jobs_submit, b"{}", timeout=1)
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await alice.request("$JS.API.INFO", b"", timeout=1)
        await alice.subscribe("_INBOX.>")
        await alice.subscribe(f"{user_inbox('bob')}.>")
        await alice.flush()
        await asyncio.sleep(0.3)
        text = " ".join(str(e) for e in errors).lower()  # nats-py writes the subject lowercased
        assert 'publish to "tm.jobs.submit"' in text
        assert 'publish to "$js.api.info"' in text
        assert 'subscription to "_inbox.>"' in text
        assert f'subscription to "{user_inbox("bob").lower()}.>"' in text
        assert len(seen) == 1  # the submit never reached the services' account
    finally:
        await alice.close()
        await service.close()
