"""``tm.jobs.submit``: submissions accepted a fetched batch at a time.

A plain nats-py pull loop (pull.py) fetches up to ``batch_size`` requests and accepts them
together, in steps that each send the whole batch's writes at once and wait for their answers
together (a few round trips per batch instead of ten per request):

1. claim each request id: a KV create of ``tm_requests[claim_key]`` holding a new job id;
2. take the versions: one raise of each name's counter for all the batch's new jobs of that name;
3. store each job record (KV create), and record its version in its claim (compare-and-set);
4. publish each job's ``tm.job.submitted`` event, its hand-off on ``tm.work.validate``, its
   audit entry and its ``tm.request.accepted`` event;
5. ack each request whose steps all succeeded (its record and hand-off are stored); any other is
   settled by the delivery policy (nak: it comes again, and finds what was stored).

A request whose id was claimed already (a redelivery, a retry after the duplicate window, the same
id on ``tm.jobs.create``), or whose record was found stored already, is accepted after the batch
the one-at-a-time way (``Intake.accept``), which decides on what is stored.  A version is taken
only for a claim this batch made, so numbers are burnt only where they always were (a crash or a
race between two deliveries of one request).  Several batches may be in flight at once: the
version counter serialises each name within the process, its compare-and-set across replicas.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable
from contextlib import nullcontext
from dataclasses import dataclass, field

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

from services.job_intake.accept import Intake
from services.job_intake.core import (
    RequestClaim,
    claim_key,
    new_job_id,
    number_versions,
    read_job_request,
    request_key,
    request_token,
    submission_request_id,
)
from services.job_intake.pull import pull_batches
from trainmaster import audit
from trainmaster.decoding import RequestError
from trainmaster.delivery_policy import MSG_ID, Settler
from trainmaster.jobstore import event_id
from trainmaster.messages import (
    JobRecord,
    JobRequest,
    RequestCloudEvent,
    RequestEventData,
    WorkItem,
    encode,
    summary_of,
)
from trainmaster.pubacks import PubAcks, cas_headers, settled
from trainmaster.statemachine import new_record
from trainmaster.telemetry import traceparent_of

log = structlog.get_logger()
_tracer = trace.get_tracer("trainmaster.job-intake")
# subject, body, headers.  No ``Nats-Expected-Stream`` header: every reader of these subjects
# parses each header of each message again (nats-py, in Python), and one stream takes each subject
Publication = tuple[str, bytes, dict[str, str]]


@dataclass
class Submission:
    """One fetched request on its way through a batch."""

    msg: Msg
    request_id: str
    actor: str
    spec: JobRequest | None = None
    refused: RequestError | None = None
    span: Span | None = None
    job_id: str = ""
    claim_revision: int = 0
    version: str = ""
    record: JobRecord | None = None
    again: bool = False  # found something stored: accept it the one-at-a-time way
    failed: BaseException | None = None
    trace_headers: dict[str, str] = field(default_factory=dict)


def request_event(request_id: str, type_: str, data: RequestEventData, subject: str) -> Publication:
    """``tm.request.accepted`` or ``tm.request.rejected`` of ``request_id`` as a publish; one
    id per request, so a redelivered submission's event is one message."""
    event = RequestCloudEvent(
        id=f"request-{request_key(request_id)}", source="trainmaster/job-intake", type=type_, subject=request_id,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), data=data,
    )
    return subject, encode(event), {MSG_ID: event.id}


class Submissions:
    def __init__(self, js: JetStreamContext, intake: Intake, pubacks: PubAcks, *, batch_size: int,
                 batches_in_flight: int, tracing: bool, timeout_s: float = 10.0) -> None:
        self.js = js
        self.intake = intake
        self.topo = intake.topo
        self.spec = intake.topo.consumer_intake_submit
        self.pubacks = pubacks
        self.batch_size = batch_size
        self.batches_in_flight = batches_in_flight
        self.tracing = tracing
        self.timeout_s = timeout_s
        self.settler = Settler.for_js(js, self.topo, self.spec)
        self.requests_prefix = f"$KV.{self.topo.bucket_requests.name}."
        self.jobs_prefix = f"$KV.{self.topo.bucket_jobs.name}."

    async def run(self) -> None:
        await pull_batches(self.js, self.spec, self.accept_batch, batch_size=self.batch_size,
                           in_flight=self.batches_in_flight)

    # ---- one batch
    async def accept_batch(self, messages: list[Msg]) -> None:
        """Accept ``messages`` together and settle each by its own outcome."""
        batch = [self._read(msg) for msg in messages]
        try:
            wanted = [s for s in batch if s.spec is not None]
            await self._claim(wanted)
            await self._number([s for s in wanted if s.job_id and not s.again and s.failed is None])
            await self._store([s for s in wanted if s.version and s.failed is None])
            await self._announce(batch)
            for s in wanted:
                if s.again and s.failed is None:
                    await self._accept_again(s)
        except Exception as exc:  # a fault of the batch as a whole: every message comes again
            log.exception("submission batch failed", messages=len(messages))
            await self.settler.failed_together(messages, exc)
            return
        finally:
            for s in batch:
                if s.span is not None:
                    s.span.end()
        for s in batch:  # an ack is a plain publish: no task per message
            await self._settle(s)
        log.info("submissions accepted", accepted=sum(1 for s in batch if s.record is not None and s.failed is None),
                 rejected=sum(1 for s in batch if s.refused), failed=sum(1 for s in batch if s.failed is not None))

    def _read(self, msg: Msg) -> Submission:
        headers = msg.headers or {}
        # the stream sequence is read (from the reply subject) only for a request without an id
        sequence = 0 if MSG_ID in headers or not msg.metadata else msg.metadata.sequence.stream
        s = Submission(msg, submission_request_id(headers, self.topo.stream_requests.name, sequence),
                       audit.actor_of(headers))
        if self.tracing:
            s.span = _tracer.start_span(f"{self.spec.durable} process", context=propagate.extract(dict(headers)),
                                        kind=SpanKind.CONSUMER, attributes={"messaging.destination.name": msg.subject})
            parent = traceparent_of(s.span)
            if parent:
                s.trace_headers = {"traceparent": parent}
        try:
            s.spec = read_job_request(msg.data, self.intake.settings.api.max_request_bytes)
        except RequestError as err:
            s.refused = err
        return s

    async def _claim(self, batch: list[Submission]) -> None:
        now = time.time()
        claims: list[Publication] = []
        for s in batch:
            s.job_id = new_job_id(now)
            claims.append((self.requests_prefix + claim_key(s.request_id, None), encode(RequestClaim(s.job_id)),
                           cas_headers(0)))
        for s, answer in zip(batch, await self.pubacks.publish_all(claims, self.timeout_s), strict=True):
            if isinstance(answer, KeyWrongLastSequenceError):
                s.again = True  # claimed before: what that claim says decides
            elif isinstance(answer, BaseException):
                s.failed = answer
            else:
                s.claim_revision = answer

    async def _number(self, batch: list[Submission]) -> None:
        assert all(s.spec is not None and s.spec.name for s in batch)
        counts = Counter(s.spec.name for s in batch if s.spec is not None and s.spec.name)
        names = list(counts)
        blocks = await self.intake.versions.take_blocks(counts, self.timeout_s)
        taken = [blocks[name] for name in names]
        firsts = {name: first for name, first in zip(names, taken, strict=True) if isinstance(first, int)}
        numbered = [s for s in batch if s.spec is not None and s.spec.name in firsts]
        for s, version in zip(numbered, number_versions([s.spec.name for s in numbered if s.spec], firsts),
                              strict=True):
            s.version = version
        for name, first in zip(names, taken, strict=True):
            if not isinstance(first, int):  # the claims stay without a version: a redelivery takes one
                for s in batch:
                    if s.spec is not None and s.spec.name == name:
                        s.failed = first

    async def _store(self, batch: list[Submission]) -> None:
        now = time.time()
        writes: list[Publication] = []
        for s in batch:
            assert s.spec is not None and s.spec.name is not None
            s.record = new_record(job_id=s.job_id, name=s.spec.name, version=s.version, spec=s.spec,
                                  request_id=s.request_id, now=now, traceparent=s.trace_headers.get("traceparent"))
            writes.append((self.jobs_prefix + s.job_id, encode(s.record), cas_headers(0)))
            # the version in the claim: a redelivery after a crash before the record was stored
            # makes the job with this version, not another
            writes.append((self.requests_prefix + claim_key(s.request_id, None),
                           encode(RequestClaim(s.job_id, s.version)), cas_headers(s.claim_revision)))
        answers = await self.pubacks.publish_all(writes, self.timeout_s)
        for i, s in enumerate(batch):
            stored = answers[2 * i]  # the claim's answer is not needed: once stored, the record decides
            if isinstance(stored, KeyWrongLastSequenceError):
                s.record, s.again = None, True  # another delivery of the request stored it first
            elif isinstance(stored, BaseException):
                s.record, s.failed = None, stored
            else:
                self.intake.index.put(s.record, stored)  # type: ignore[arg-type]

    async def _announce(self, batch: list[Submission]) -> None:
        """The events, hand-offs and audit entries of the batch's new jobs, and the rejections."""
        sends: list[tuple[Submission, str, Publication]] = []  # (submission, kind, publish)
        saves: list[Awaitable[None]] = []
        store, topo = self.intake.store, self.topo
        for s in batch:
            if s.refused is not None:
                log.info("submission rejected", request_id=s.request_id, error=s.refused.body.message)
                entry = audit.entry(s.actor, "job_submit", audit.CLUSTER, s.request_id, reason=s.refused.body.message)
                sends.append((s, "audit", audit.publication(topo, entry, s.request_id)))
                sends.append((s, "event", self._request_event(s.request_id, "tm.request.rejected",
                                                                RequestEventData(s.request_id, error=s.refused.body))))
            elif s.record is not None and s.failed is None and not s.again:
                record = s.record
                subject, body, headers = store.event_message(record, record.history[0])
                sends.append((s, "job-event", (subject, body, {**headers, **s.trace_headers})))
                sends.append((s, "work", (topo.work_validate, encode(WorkItem(record.id)),
                                          {MSG_ID: f"{record.id}.validate", **s.trace_headers})))
                sends.extend((s, kind, p) for kind, p in self._outcome(s, record))
                if record.spec.save_as is not None:  # R21: the job's parameters saved as a template
                    save_as = record.spec.save_as
                    saves.append(self.intake.templates.save(save_as.name, save_as.description, record.spec, record.id))
                log.debug("job accepted", job_id=record.id, name=record.name, version=record.version,
                          request_id=s.request_id)
        answers = await self.pubacks.publish_all((p for _, _, p in sends), self.timeout_s)
        for (s, kind, _), answer in zip(sends, answers, strict=True):
            if not isinstance(answer, BaseException):
                if kind == "job-event" and s.record is not None:
                    store.note_published(event_id(s.record.id, 0))
            elif kind == "audit":  # the action stands without its entry (trainmaster.audit)
                log.error("audit entry not recorded", request_id=s.request_id,
                          error=f"{type(answer).__name__}: {answer}")
            elif s.failed is None:
                s.failed = answer
        for saved in await settled(saves, self.timeout_s * 3):
            if isinstance(saved, BaseException):
                raise saved

    def _outcome(self, s: Submission, record: JobRecord) -> list[tuple[str, Publication]]:
        """The audit entry and the ``tm.request.accepted`` event of an accepted submission."""
        entry = audit.entry(s.actor, "job_submit", record.spec.account, record.id, at=record.created_at,
                            detail={"name": record.name, "version": record.version, "request_id": s.request_id})
        # keyed by the request id: a redelivered submission is one entry
        return [("audit", audit.publication(self.topo, entry, s.request_id)),
                ("event", self._request_event(s.request_id, "tm.request.accepted",
                                              RequestEventData(s.request_id, job=summary_of(record))))]

    def _request_event(self, request_id: str, type_: str, data: RequestEventData) -> Publication:
        return request_event(request_id, type_, data, self.topo.request_events(request_token(request_id)))

    async def _accept_again(self, s: Submission) -> None:
        """A request claimed before: ``Intake.accept`` finds its job (or makes it, as the claim says)."""
        assert s.spec is not None
        try:
            with trace.use_span(s.span, end_on_exit=False) if s.span is not None else nullcontext():
                s.record = await self.intake.accept(s.spec, s.request_id)
            answers = await self.pubacks.publish_all((p for _, p in self._outcome(s, s.record)), self.timeout_s)
            if isinstance(answers[0], BaseException):
                log.error("audit entry not recorded", request_id=s.request_id, error=repr(answers[0]))
            if isinstance(answers[1], BaseException):
                raise answers[1]
        except Exception as exc:
            s.failed = exc

    async def _settle(self, s: Submission) -> None:
        if s.failed is None:
            await s.msg.ack()
        else:
            await self.settler.failed(s.msg, s.failed if isinstance(s.failed, Exception) else RuntimeError(s.failed))

