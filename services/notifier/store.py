"""KV adapters of the notifier: topics (with a watched in-memory copy for the hot path) and the
delivery records / dead letters."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from services.notifier.topics import ApiProblem
from trainmaster import kvstore
from trainmaster.messages import DeadLetter, DeliveryRecord, TopicRecord, TopicSubscription, encode
from trainmaster.names import NAME_RE
from trainmaster.topology import Topology

log = structlog.get_logger()
_decode_topic = msgspec.json.Decoder(TopicRecord).decode
_decode_record = msgspec.json.Decoder(DeliveryRecord).decode
_decode_dead = msgspec.json.Decoder(DeadLetter).decode


def topic_missing(name: str, field: str = "name") -> ApiProblem:
    """The answer about a topic that is not there (or that the caller may not see)."""
    return ApiProblem("not_found", f"no topic {name!r}", field)


class TopicStore:
    """``tm_topics``: one key per topic, its record holding its subscriptions; every write is a
    compare-and-set.  ``cache`` follows the bucket through a watch, for the per-delivery lookups."""

    def __init__(self, js: JetStreamContext, topo: Topology) -> None:
        self.js = js
        self.topo = topo
        self.kv: KeyValue | None = None
        self.cache: dict[str, TopicRecord] = {}
        # per topic: the cached record it was built from and its subscriptions by id (a topic
        # holds up to 1000 of them; every delivery looks one up)
        self._by_id: dict[str, tuple[TopicRecord, dict[str, TopicSubscription]]] = {}

    async def open(self) -> TopicStore:
        self.kv = await self.js.key_value(self.topo.bucket_topics.name)
        return self

    async def get(self, name: str) -> tuple[TopicRecord, int] | None:
        assert self.kv is not None
        if not NAME_RE.match(name):
            return None
        found = await kvstore.read(self.kv, name, _decode_topic)
        return None if found is None else (found.value, found.revision)

    async def require(self, name: str) -> tuple[TopicRecord, int]:
        found = await self.get(name)
        if found is None:
            raise topic_missing(name)
        return found

    async def create(self, record: TopicRecord) -> bool:
        """False when the topic exists already."""
        assert self.kv is not None
        if await kvstore.create(self.kv, record.name, encode(record)) is None:
            return False
        self.cache[record.name] = record
        return True

    async def change(self, name: str, fn: Callable[[TopicRecord], TopicRecord | None]) -> TopicRecord | None:
        """Apply ``fn`` at the current revision (retried on a lost race); None: ``fn`` changed nothing."""
        assert self.kv is not None

        def decide(record: TopicRecord | None) -> TopicRecord | None:
            if record is None:
                raise topic_missing(name)
            return fn(record)

        changed = await kvstore.change(self.kv, name, decide, decode=_decode_topic)
        if not changed.written:
            return None
        assert changed.value is not None
        self.cache[name] = changed.value
        return changed.value

    async def remove(self, name: str, check: Callable[[TopicRecord], None]) -> TopicRecord:
        """Delete the topic once ``check`` (which raises to refuse) passes on its current record."""
        assert self.kv is not None
        if not NAME_RE.match(name):
            raise topic_missing(name)
        removed = await kvstore.remove(self.kv, name, check, decode=_decode_topic)
        if removed is None:
            raise topic_missing(name)
        self.cache.pop(name, None)
        return removed

    async def all(self) -> list[TopicRecord]:
        assert self.kv is not None
        return sorted((_decode_topic(v) for v in await kvstore.values(self.kv)), key=lambda t: t.name)

    def cached_subscription(self, topic: str, sub_id: str) -> TopicSubscription | None:
        """From the watched copy only (None: not there, ask ``subscription``)."""
        record = self.cache.get(topic)
        if record is None:
            self._by_id.pop(topic, None)
            return None
        indexed = self._by_id.get(topic)
        if indexed is None or indexed[0] is not record:
            indexed = self._by_id[topic] = (record, {s.id: s for s in record.subscriptions})
        return indexed[1].get(sub_id)

    async def subscription(self, topic: str, sub_id: str) -> TopicSubscription | None:
        """From the watched copy; a miss (just created, watch not there yet) reads the bucket."""
        sub = self.cached_subscription(topic, sub_id)
        if sub is not None:
            return sub
        found = await self.get(topic)
        if found is None:
            return None
        self.cache[topic] = found[0]
        return next((s for s in found[0].subscriptions if s.id == sub_id), None)

    async def follow(self) -> None:
        """Keep ``cache`` in step with the bucket (runs for the life of the service)."""
        assert self.kv is not None
        watcher = await self.kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # end of the initial values
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    self.cache.pop(entry.key, None)
                else:
                    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                        self.cache[entry.key] = _decode_topic(entry.value)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()


class DeliveryLog:
    """``tm_deliveries`` (latest state of every delivery, 7 days) and ``tm_dead_letters`` (30 days),
    both keyed ``<topic>.<subscription id>.<webhook id>``."""

    def __init__(self, nc: NATS, js: JetStreamContext, topo: Topology) -> None:
        self.nc = nc
        self.js = js
        self.topo = topo
        self.records: KeyValue | None = None
        self.dead: KeyValue | None = None

    async def open(self) -> DeliveryLog:
        self.records = await self.js.key_value(self.topo.bucket_deliveries.name)
        self.dead = await self.js.key_value(self.topo.bucket_dead_letters.name)
        return self

    @staticmethod
    def key(topic: str, subscription_id: str, delivery_id: str) -> str:
        return f"{topic}.{subscription_id}.{delivery_id}"

    async def attempts(self, key: str) -> int:
        """Attempts made so far (0: none recorded)."""
        assert self.records is not None
        found = await kvstore.read(self.records, key, _decode_record)
        return 0 if found is None else found.value.attempts

    async def record(self, rec: DeliveryRecord, wait: bool = True) -> None:
        """Store the delivery's latest state.  ``wait=False`` (a success: nothing depends on it)
        publishes without awaiting the store's ack, which keeps the send path at one round trip."""
        assert self.records is not None
        key = self.key(rec.topic, rec.subscription_id, rec.id)
        if wait:
            await self.records.put(key, encode(rec))
        else:
            await self.nc.publish(f"$KV.{self.topo.bucket_deliveries.name}.{key}", encode(rec))

    async def dead_letter(self, rec: DeadLetter) -> None:
        assert self.dead is not None
        await self.dead.put(self.key(rec.topic, rec.subscription_id, rec.id), encode(rec))

    async def list(self, topic: str, dead: bool, limit: int) -> tuple[list[DeliveryRecord], int]:
        """The newest ``limit`` deliveries of ``topic`` and how many there are."""
        kv = self.dead if dead else self.records
        assert kv is not None
        if not NAME_RE.match(topic):
            return [], 0
        try:
            values = await kvstore.values(kv, f"{topic}.>")
        except (TimeoutError, NatsTimeoutError):
            values = []
        decode = _decode_dead if dead else _decode_record
        records = sorted((decode(v) for v in values), key=lambda r: r.updated_at, reverse=True)
        return records[:limit], len(records)
