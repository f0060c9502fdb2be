"""Task 1 of the DAG: move every `UserEvents` message waiting in Kafka into MongoDB, exactly once.

Exactly once, whatever crashes or retries happen, comes from the order of three writes per batch:

1. each valid event is inserted with a deterministic `_id` (its Kafka coordinates), so a message
   read twice is stored once; invalid messages go to the quarantine collection the same way;
2. a *pending batch* document per partition records, for each (UserId, EventName) pair, the
   offsets of its events in the batch; task 2 (`app.pipeline.counts`) counts from these;
3. only then are the batch's offsets committed (auto-commit is off).

A crash before 3 makes the next run read the batch again: 1 and 2 are repeated harmlessly.
The end offsets taken when a partition is assigned bound the run, so it ends even while the
generator keeps producing; `drain_max_records` and `drain_max_seconds` let a large backlog drain
over several runs.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, PyMongoError

from app.core.config import Settings
from app.pipeline.store import Document, EventStore, mongo_client
from app.schemas import UserEvent, parse_json_object

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
POLL_TIMEOUT_MS = 500


class DrainError(RuntimeError):
    """The drain stopped; the message says what happened and what to do."""


@dataclass
class DrainSummary:
    """What one drain did; small enough for an Airflow XCom."""

    consumed: int = 0
    stored: int = 0
    # Messages whose document already existed: re-read after a crash before the commit.
    already_stored: int = 0
    quarantined: int = 0
    batches: int = 0
    # Messages below the end offsets taken at start that a cap left for the next run.
    left: int = 0
    stopped: str = "caught up"
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Batch:
    """The documents one polled batch becomes, and the offsets to commit once they are stored."""

    events: list[Document] = field(default_factory=list)
    quarantine: list[Document] = field(default_factory=list)
    pending: list[Document] = field(default_factory=list)
    commit: dict[TopicPartition, int] = field(default_factory=dict)


def message_id(topic: str, partition: int, offset: int) -> str:
    """The `_id` of a message's document: its coordinates, the same every time it is read."""
    return f"{topic}:{partition}:{offset}"


def pending_id(partition: int, first_offset: int, batch_token: str) -> str:
    """`_id` of a pending batch; sorting by it orders each partition's batches by offset."""
    return f"{partition:05d}:{first_offset:020d}:{batch_token}"


def _kafka_coordinates(record: ConsumerRecord) -> Document:
    timestamp = (
        datetime.fromtimestamp(record.timestamp / 1000, UTC) if record.timestamp >= 0 else None
    )
    return {
        "Topic": record.topic,
        "Partition": record.partition,
        "Offset": record.offset,
        "Timestamp": timestamp,
    }


def event_document(event: UserEvent, record: ConsumerRecord) -> Document:
    """The stored form of a valid event: its wire fields, `TimeStamp` as a date, and where it
    came from in Kafka."""
    document: Document = {"_id": message_id(record.topic, record.partition, record.offset)}
    document.update(event.to_wire())
    # A BSON date (millisecond precision) so time queries and sorting work in MongoDB.
    document["TimeStamp"] = event.timestamp
    document["Kafka"] = _kafka_coordinates(record)
    return document


def quarantine_document(record: ConsumerRecord, reason: str) -> Document:
    """The stored form of a message that is not a valid event: the raw value and why."""
    raw: bytes | None = record.value
    text: str | None
    try:
        text, encoding = (raw.decode(), "utf-8") if raw is not None else (None, None)
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw or b"").decode(), "base64"
    return {
        "_id": message_id(record.topic, record.partition, record.offset),
        "Reason": reason,
        "RawValue": text,
        "RawEncoding": encoding,
        "Kafka": _kafka_coordinates(record),
        "QuarantinedAt": datetime.now(UTC),
    }


def invalid_reason(error: ValueError) -> str:
    """One line saying why a message is not a valid event."""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or 'value'}: {issue['msg']}"
            for issue in error.errors()
        )
    return str(error)


def prepare_batch(records: Iterable[ConsumerRecord], batch_token: str) -> Batch:
    """Validate polled records and turn them into the documents to store.

    `records` must be in offset order within each partition, as `poll` returns them.
    """
    batch = Batch()
    # partition -> (first offset, {(UserId, EventName): [offsets]})
    pairs: dict[int, tuple[int, dict[tuple[str, str], list[int]]]] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        batch.commit[tp] = record.offset + 1
        _, partition_pairs = pairs.setdefault(record.partition, (record.offset, {}))
        try:
            event = UserEvent.model_validate(parse_json_object(record.value))
        except ValueError as error:
            batch.quarantine.append(quarantine_document(record, invalid_reason(error)))
            continue
        batch.events.append(event_document(event, record))
        partition_pairs.setdefault((event.user_id, event.event_name.value), []).append(
            record.offset
        )
    for partition, (first_offset, partition_pairs) in pairs.items():
        if not partition_pairs:
            continue
        batch.pending.append(
            {
                "_id": pending_id(partition, first_offset, batch_token),
                "Partition": partition,
                "FirstOffset": first_offset,
                "PairCount": len(partition_pairs),
                "Pairs": [
                    {"UserId": user_id, "EventName": event_name, "Offsets": offsets}
                    for (user_id, event_name), offsets in partition_pairs.items()
                ],
            }
        )
    return batch


def insert_new(collection: Collection[Document], documents: Sequence[Document]) -> int:
    """Insert documents whose `_id` is not stored yet; return how many were new.

    Only duplicate-key errors are expected (a message read again); any other error is raised.
    """
    if not documents:
        return 0
    try:
        return len(collection.insert_many(documents, ordered=False).inserted_ids)
    except BulkWriteError as error:
        details = error.details
        unexpected = [e for e in details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
        if unexpected or details.get("writeConcernErrors"):
            raise
        return int(details.get("nInserted", 0))


def open_consumer(settings: Settings) -> KafkaConsumer:
    """A consumer of the drain's group that commits only when told to."""
    try:
        return KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            group_id=settings.drain_group_id,
            client_id=f"{settings.drain_group_id}-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            # A new group starts with everything the topic holds: that is what is waiting.
            auto_offset_reset="earliest",
            max_poll_records=settings.drain_batch_size,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            bootstrap_timeout_ms=10_000,
            # A run killed mid-drain keeps its partitions until its session expires; the next
            # run waits that long to be assigned them (the client's default is 45 s).
            session_timeout_ms=10_000,
        )
    except KafkaError as error:
        raise DrainError(
            f"Kafka is not reachable at {settings.kafka_bootstrap_servers}, so nothing was "
            "drained. Start the services with `task infra-up` (or check KAFKA_BOOTSTRAP_SERVERS)."
        ) from error


def drain_user_events(settings: Settings) -> DrainSummary:
    """Store every `UserEvents` message that is waiting when the call starts.

    Commits the group's offsets after each stored batch. Raises DrainError, naming what to do,
    when Kafka or MongoDB fails; what was committed before stays stored, the rest is read again
    by the next run.
    """
    client = mongo_client(settings)
    try:
        consumer = open_consumer(settings)
        try:
            return _drain(consumer, EventStore.connect(settings, client), settings)
        finally:
            consumer.close(autocommit=False)
    finally:
        client.close()


def _store(store: EventStore, batch: Batch, settings: Settings) -> tuple[int, int]:
    """Write a batch in the order that makes a crash harmless; return (new, already stored)."""
    try:
        new = insert_new(store.events, batch.events)
        insert_new(store.quarantine, batch.quarantine)
        insert_new(store.pending, batch.pending)
    except PyMongoError as error:
        raise DrainError(
            f"MongoDB at {settings.mongo_url} failed while storing a batch of "
            f"{len(batch.events) + len(batch.quarantine)} messages ({type(error).__name__}: "
            f"{error}). Their offsets were not committed, so nothing is lost: the next run reads "
            "them again. Check MongoDB with `task infra-status`; `task infra-up` starts it."
        ) from error
    return new, len(batch.events) - new


def _commit(consumer: KafkaConsumer, offsets: Mapping[TopicPartition, int]) -> None:
    try:
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})
    except KafkaError as error:
        raise DrainError(
            f"The batch is stored in MongoDB but committing its Kafka offsets failed "
            f"({type(error).__name__}: {error}). Nothing is lost or duplicated: the next run "
            "reads it again and recognises what is already stored. If this repeats, check Kafka "
            "with `task infra-status`."
        ) from error


def _drain(consumer: KafkaConsumer, store: EventStore, settings: Settings) -> DrainSummary:
    topic = settings.topic_user_events
    if not consumer.partitions_for_topic(topic):
        raise DrainError(
            f"Topic {topic} does not exist on {settings.kafka_bootstrap_servers}. "
            "`task infra-up` creates the lab's topics."
        )
    consumer.subscribe([topic])
    summary = DrainSummary()
    started = time.monotonic()
    # End offset of each partition when it was first assigned: the run stops there.
    marks: dict[TopicPartition, int] = {}

    def mark_new(partitions: Iterable[TopicPartition]) -> None:
        new = [tp for tp in partitions if tp not in marks]
        if new:
            marks.update(consumer.end_offsets(new))

    while True:
        assigned = consumer.assignment()
        mark_new(assigned)
        waiting = {tp: marks[tp] - consumer.position(tp) for tp in assigned}
        waiting = {tp: count for tp, count in waiting.items() if count > 0}
        summary.left = sum(waiting.values())
        if assigned and not waiting:
            summary.stopped = "caught up"
            break
        if summary.consumed >= settings.drain_max_records:
            summary.stopped = f"record cap ({settings.drain_max_records})"
            break
        if time.monotonic() - started >= settings.drain_max_seconds:
            summary.stopped = f"time cap ({settings.drain_max_seconds:g} s)"
            break
        # A partition past its mark is paused so its new messages are not even fetched.
        consumer.pause(*(tp for tp in assigned if tp not in waiting))
        polled = consumer.poll(
            timeout_ms=POLL_TIMEOUT_MS,
            max_records=min(
                settings.drain_batch_size, settings.drain_max_records - summary.consumed
            ),
        )
        mark_new(polled)
        records = [
            record for tp, part in polled.items() for record in part if record.offset < marks[tp]
        ]
        if not records:
            continue
        batch = prepare_batch(records, uuid.uuid4().hex)
        new, already = _store(store, batch, settings)
        _commit(consumer, batch.commit)
        summary.consumed += len(records)
        summary.stored += new
        summary.already_stored += already
        summary.quarantined += len(batch.quarantine)
        summary.batches += 1
        log.info(
            "batch %d: %d messages, %d new events, %d already stored, %d quarantined; committed %s",
            summary.batches,
            len(records),
            new,
            already,
            len(batch.quarantine),
            {tp.partition: offset for tp, offset in sorted(batch.commit.items())},
        )
    summary.seconds = round(time.monotonic() - started, 3)
    log.info("drain of %s finished: %s", topic, summary)
    return summary
