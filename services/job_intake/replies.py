"""How job-intake answers its request/reply verbs.  A handler decodes its body with
``trainmaster.decoding`` and raises to turn a request down (a body that does not decode, a record
that is not there, a conflict, a caller without the role: ``access.Denied``); ``answer`` registers
it so that each refusal becomes its error reply, wherever it was raised (a compare-and-set
``decide`` too)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from faststream.nats import NatsBroker, NatsMessage

from trainmaster.access import Denied
from trainmaster.bus import MSG_ID, Responder, error_reply, responder
from trainmaster.decoding import RequestError
from trainmaster.messages import Violation

QUEUE = "job-intake"  # every replica answers in one queue group


class Refused(Exception):
    """A request turned down; ``reply`` is the error reply that says why."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply.decode(errors="replace"))
        self.reply = reply


def refused(code: str, message: str, details: list[Violation] | None = None) -> Refused:
    return Refused(error_reply(code, message, details))


def not_found(kind: str, name: str, hint: str) -> Refused:
    return refused("not_found", f"no {kind} named {name!r}", [Violation("name", "not_found", hint)])


def denied(refusal: Denied) -> bytes:
    """The error reply to a caller without the identity or the role a request takes."""
    return error_reply(refusal.code, refusal.message, [Violation(refusal.field, refusal.code, refusal.message)])


def rejected(err: RequestError) -> bytes:
    """The error reply to a body that did not decode (or a spec that is not one)."""
    return error_reply(err.body.code, err.body.message, err.body.details)


def answering(handle: Responder) -> Responder:
    async def answer_one(msg: NatsMessage) -> bytes:
        try:
            return await handle(msg)
        except RequestError as err:
            return rejected(err)
        except Refused as refusal:
            return refusal.reply
        except Denied as refusal:
            return denied(refusal)

    return answer_one


def answer(broker: NatsBroker, handlers: Mapping[str, Responder]) -> None:
    """Answer each subject with its handler, in job-intake's queue group."""
    for subject, handle in handlers.items():
        responder(broker, subject, QUEUE, answering(handle))


def request_id_of(msg: NatsMessage, verb: str) -> str:
    """The client's request id (``Nats-Msg-Id``: a retry with it returns the job made the first
    time), else a fresh one."""
    return (msg.headers or {}).get(MSG_ID) or f"{verb}-{uuid.uuid4()}"
