"""A job's events and log lines as a streamed reply (``tm.jobs.events``, ``tm.jobs.logs``): the
requests, the headers of each message, and when a feed ends.  Pure: job-intake's relay
(services/job_intake/follow.py) reads the streams and asks ``next_step`` what to do; the client
(``trainmaster.client``) reads the headers.

A reply is one message per stored event or line (its body unchanged, ``Tm-Seq`` its stream
sequence), keepalives while a follow is quiet, then an empty message with ``Tm-End``: ``done``, or
``more`` with ``Tm-Next`` (the ``after`` to ask again with) when the relay's window ran out.  A
refusal is one error reply and nothing else."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

from msgspec import Meta, Struct

SEQ = "Tm-Seq"
END = "Tm-End"
NEXT = "Tm-Next"
KEEPALIVE = "Tm-Keepalive"
NODE = "Tm-Node"
LOG_STREAM = "Tm-Stream"  # stdout, stderr, or trainmaster (the agent's own lines)
LOG_LINE = "Tm-Line"
JOB_STATUS = "Tm-Job-Status"  # of a stored event: the status it announces
EVENT_TYPE = "Tm-Event-Type"

DONE = "done"
MORE = "more"

# what a relayed message keeps of the stored message's headers
_KEPT_OF_EVENTS = (EVENT_TYPE, JOB_STATUS)
_KEPT_OF_LINES = (LOG_STREAM, LOG_LINE)
TERMINAL_STATUSES = frozenset({"Succeeded", "Failed", "Stopped"})


class EventsRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """``tm.jobs.events``: the job's events after stream sequence ``after``; with ``follow``, the
    new ones too until the job has ended."""

    id: str
    follow: bool = False
    after: Annotated[int, Meta(ge=0)] = 0


class LogsRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """``tm.jobs.logs``: the job's log lines after ``after`` (of one ``node``, else of every node);
    ``tail``: only the last so many of them; ``follow``: the new ones too until the job has ended."""

    id: str
    node: Annotated[int, Meta(ge=0)] | None = None
    follow: bool = False
    after: Annotated[int, Meta(ge=0)] = 0
    tail: Annotated[int, Meta(ge=0)] | None = None


# ------------------------------------------------------------------------ headers
def event_headers(seq: int, stored: Mapping[str, str] | None) -> dict[str, str]:
    return _kept(seq, stored, _KEPT_OF_EVENTS)


def line_headers(seq: int, subject: str, stored: Mapping[str, str] | None) -> dict[str, str]:
    """A log line's: its sequence, its stream and number as the agent wrote them, its node (the
    subject's last token: ``tm.logs.<job>.<node>``)."""
    out = _kept(seq, stored, _KEPT_OF_LINES)
    out[NODE] = subject.rsplit(".", 1)[-1]
    return out


def _kept(seq: int, stored: Mapping[str, str] | None, names: tuple[str, ...]) -> dict[str, str]:
    out = {SEQ: str(seq)}
    for name in names:
        if stored and name in stored:
            out[name] = stored[name]
    return out


def keepalive_headers() -> dict[str, str]:
    return {KEEPALIVE: "1"}


def end_headers(step: Step, last_seq: int) -> dict[str, str]:
    """The closing message's: ``done``, or ``more`` with the ``after`` to continue from."""
    if step is Step.MORE:
        return {END: MORE, NEXT: str(last_seq)}
    return {END: DONE}


def ends_job(stored: Mapping[str, str] | None) -> bool:
    """Whether a stored event announces a final status (the job's last event)."""
    return stored is not None and stored.get(JOB_STATUS) in TERMINAL_STATUSES


# ------------------------------------------------------------------------ when a feed ends
class Step(enum.Enum):
    READ = "read"  # more is stored: read the next batch at once
    WAIT = "wait"  # caught up, following: read again, waiting a while for new messages
    KEEPALIVE = "keepalive"  # a quiet follow: tell the requester (and the server's reply route) it lives
    DONE = "done"  # everything sent: end with Tm-End done
    MORE = "more"  # the window is spent: end with Tm-End more and where to go on from


@dataclass(frozen=True)
class Pace:
    """``window_s``: the longest one request is served (the client asks again with ``after``);
    ``keepalive_s``: the longest a follow stays silent; ``settle_s``: how long after the job was
    seen final a follow still reads (messages written just before its end)."""

    window_s: float = 300.0
    keepalive_s: float = 20.0
    settle_s: float = 1.0


@dataclass(frozen=True)
class Progress:
    """Where a feed stands.  Times are one monotonic clock's.

    ``caught_up``: the last read found nothing more stored; ``read_at``: when that read began;
    ``final_at``: when the job was first seen in a final state (None: not yet); ``ended``: the
    message that ends the job's feed was sent (an event with a final status)."""

    follow: bool
    started: float
    now: float
    last_sent: float
    caught_up: bool = False
    read_at: float = 0.0
    final_at: float | None = None
    ended: bool = False


def next_step(p: Progress, pace: Pace) -> Step:
    step = _step(p, pace)
    if step is not Step.DONE and p.now - p.started >= pace.window_s:
        return Step.MORE
    return step


def _step(p: Progress, pace: Pace) -> Step:
    if not p.caught_up:
        return Step.READ
    if not p.follow or _finished(p, pace):
        return Step.DONE
    if p.now - p.last_sent >= pace.keepalive_s:
        return Step.KEEPALIVE
    return Step.WAIT


def _finished(p: Progress, pace: Pace) -> bool:
    """Everything of an ended job sent: its last event, or every message stored by a read that
    began ``settle_s`` after the job was seen final."""
    if p.ended:
        return True
    return p.final_at is not None and p.read_at >= p.final_at + pace.settle_s


async def tail_start(first: int, end: int, tail: int, count_from: Callable[[int], Awaitable[int]]) -> int:
    """The first sequence in [``first``, ``end``] from which at most ``tail`` messages are stored
    (``count_from(seq)``: how many are stored from ``seq`` on; none from ``end``): a binary search,
    so that the last lines of a long log cost a few counts rather than reading it all."""
    if await count_from(first) <= tail:
        return first
    lo, hi = first + 1, end
    while lo < hi:
        mid = (lo + hi) // 2
        if await count_from(mid) <= tail:
            hi = mid
        else:
            lo = mid + 1
    return lo
