"""The biller (R23): charges a job's account once the job ended after running.

Consumes every job event (durable ``billing`` on ``tm.events.job.*``, a plain pull loop: pull.py;
ack wait 30 s, 10 deliveries, nak with 1/5/15 s delays, undecodable events dead-lettered).  For an event of an ended
job it reads the record and, if the job ran and is not billed yet:

1. charges the account: ledger entry ``charge:<job id>`` of ``-cost`` (compare-and-set; an entry
   with that id already on the account changes nothing), then
2. records ``Billed`` on the job (``change_id="billed"``, through the state machine: once).

A crash between the two is healed by the redelivery: step 1 finds its entry, step 2 runs.  So a
redelivered or repeated end event never charges twice.  Jobs that never ran are not billed.
"""

from __future__ import annotations

import time

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from trainmaster import accounts
from trainmaster.bus import UNDECODABLE, Poison
from trainmaster.catalog import ResourceCatalog
from trainmaster.jobstore import JobStore
from trainmaster.messages import Billed, Billing, LedgerEntry
from trainmaster.statemachine import IllegalTransition

log = structlog.get_logger()
ENDED = ("Succeeded", "Failed", "Stopped")


class _EventHead(msgspec.Struct):
    class Data(msgspec.Struct):
        job_id: str
        status: str

    data: Data


_decode_head = msgspec.json.Decoder(_EventHead).decode


class Biller:
    def __init__(self, store: JobStore, accounts_kv: KeyValue, resources: ResourceCatalog, *,
                 default_account: str, currency: str) -> None:
        self.store = store
        self.kv = accounts_kv
        self.resources = resources
        self.default_account = default_account
        self.currency = currency

    async def on_event(self, msg: Msg) -> None:
        try:
            head = _decode_head(msg.data)
        except UNDECODABLE as exc:
            raise Poison(f"not a job event: {exc}") from exc
        if head.data.status not in ENDED:
            return
        with structlog.contextvars.bound_contextvars(job_id=head.data.job_id):
            await self.bill(head.data.job_id)

    async def bill(self, job_id: str) -> Billing | None:
        record = await self.store.find(job_id)
        if record is None or not accounts.billable(record):
            return record.billing if record is not None else None
        seconds = accounts.billed_seconds(record.history) or 0.0
        price = accounts.price_per_hour(record.spec.resources, self.resources) or 0.0
        name = record.spec.account or self.default_account
        billing = Billing(account=name, price_per_hour=price, duration_s=round(seconds, 3),
                          cost=accounts.cost_of(price, seconds), currency=self.currency, billed_at=time.time())
        entry = LedgerEntry(id=f"charge:{job_id}", kind="charge", amount=-billing.cost, at=billing.billed_at,
                            job_id=job_id, note=f"{record.name} {record.version}: {seconds:.1f} s at {price:g}/h")
        account, charged = await accounts.post(self.kv, name, entry, currency=self.currency, create=True)
        try:
            result = await self.store.apply(job_id, Billed(change_id="billed", billing=billing))
        except IllegalTransition as exc:
            log.warning("billing not recorded on the job", why=str(exc))
            return None
        log.info("job billed", account=name, cost=billing.cost, seconds=billing.duration_s, charged=charged,
                 recorded=result.applied, balance=account.balance)
        return result.record.billing
