"""How often a delivery task was handed out, read from its ack subject (services.notifier.core)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg

from services.notifier.core import times_delivered


@pytest.mark.parametrize("reply", [
    "$JS.ACK.TM_DELIVERIES.notifier-deliver.3.120.77.1764670000000000000.9",
    "$JS.ACK._.ACCHASH.TM_DELIVERIES.notifier-deliver.3.120.77.1764670000000000000.9.rnd",
    "$JS.ACK.hub.ACCHASH.TM_DELIVERIES.notifier-deliver.3.120.77.1764670000000000000.9",
])
def test_both_ack_subject_forms(reply: str) -> None:
    assert times_delivered(reply) == 3


@pytest.mark.parametrize("reply", [None, "", "_INBOX.abc", "$JS.ACK.S.C.x.1.2.3.4", "$JS.ACK.too.short"])
def test_anything_else_is_unknown(reply: str | None) -> None:
    assert times_delivered(reply) is None


@given(delivered=st.integers(1, 10**9), stream_seq=st.integers(1, 10**12), pending=st.integers(0, 10**6),
       v2=st.booleans())
def test_agrees_with_nats_py(delivered: int, stream_seq: int, pending: int, v2: bool) -> None:
    tail = f"TM_DELIVERIES.notifier-deliver.{delivered}.{stream_seq}.{stream_seq}.1764670000000000000.{pending}"
    reply = f"$JS.ACK._.HASH.{tail}.tok" if v2 else f"$JS.ACK.{tail}"
    msg = Msg(_client=None, subject="x", reply=reply)  # type: ignore[arg-type]
    assert msg.metadata is not None
    assert times_delivered(reply) == msg.metadata.num_delivered
