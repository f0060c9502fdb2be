"""Task 1 of the DAG: move every `UserEvents` message waiting in Kafka into MongoDB, exactly once.

An event's identity is a fingerprint of its canonical content (`event_id`), not where Kafka put
it: a client that retries after a timeout may deliver the same event twice, at two offsets, and it
must be stored and counted once. A client that sent an `Idempotency-Key` named the event itself:
the key is its identity, so two real, identical events with two keys are both stored and counted,
and a key sent twice is stored once, as first stored (later bodies under that key are duplicates).
The Kafka coordinates stay on the document as lineage.

Exactly once, whatever crashes, retries or resets happen, comes from the order of three writes
per batch:

1. each valid event is inserted with its fingerprint as `_id`, so an event read or delivered
   twice is stored once; invalid messages go to the quarantine collection, keyed by their Kafka
   coordinates (including the topic's id);
2. a *pending batch* document per partition records, for each (UserId, EventName) pair, the
   offsets of the events to count: the ones stored now and the ones this very message stored
   before (a batch read again after a crash). An event whose fingerprint another message stored
   is a duplicate delivery and is left out. Task 2 (`app.pipeline.counts`) counts from these;
3. only then are the batch's offsets committed (auto-commit is off).

A crash before 3 makes the next run read the batch again: 1 and 2 are repeated harmlessly.
The end offsets taken at start bound the run, so it ends even while the generator keeps
producing; `drain_max_records` and `drain_max_seconds` let a large backlog drain over several runs.

A drain reads the partitions it is given (all by default) by explicit assignment, not by joining
the group: several drains can split a topic's partitions between them (`partition_groups`, the
DAG's mapped drain tasks) with no rebalance to interrupt a batch between its store and its
commit. They share the group id only to keep the committed offsets, which `task status` reports
as the group's lag. Two drains given the same partition (a manual run beside the scheduled one)
store and count each event once all the same, as a crash's re-read does.

When Kafka lost its data (the topic deleted and re-created, the broker's folder wiped), offsets
start again at 0. The drain notices it (a new topic id, or a committed offset past the end),
says so in the log, and reads the partition from its start; the counting marks are kept per
topic id, so the new topic's events are counted although their offsets were seen before.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from app.core.clients import Document, mongo_client
from app.core.config import Settings
from app.core.errors import LabError
from app.core.kafka import topic_id as current_topic_id
from app.core.kafka import topic_partitions
from app.pipeline.store import EventStore
from app.schemas import (
    IDEMPOTENCY_KEY_HEADER,
    UserEvent,
    canonical_json,
    canonical_wire,
    idempotency_key,
    parse_json_object,
)

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500


class DrainError(LabError):
    """The drain stopped; the message says what happened and what to do."""


@dataclass
class DrainSummary:
    """What one drain did; small enough for an Airflow XCom."""

    consumed: int = 0
    stored: int = 0
    # Messages whose event this same message had stored: re-read after a crash before the commit.
    already_stored: int = 0
    # Events another message had stored already: a client's retry delivered them twice.
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0
    # Partitions read again from their start because Kafka lost its data or the topic changed.
    resets: int = 0
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
    # partition -> first offset of the batch in it (poison messages included)
    first_offsets: dict[int, int] = field(default_factory=dict)
    commit: dict[TopicPartition, int] = field(default_factory=dict)


def event_id(event: UserEvent, idempotency_key: str | None = None) -> str:
    """The `_id` of an event: the client's `Idempotency-Key` when it gave one, else a fingerprint
    of the event's canonical form (`app.schemas.canonical_json`: NFC ids, UTC time, one zero),
    the same whichever message carries it and however the client spelled it."""
    return _identity(canonical_wire(event), idempotency_key)


def _identity(wire: dict[str, Any], idempotency_key: str | None) -> str:
    # A key and a content are hashed in separate name spaces: neither can take the other's id.
    basis = (
        canonical_json(wire)
        if idempotency_key is None
        else f"{IDEMPOTENCY_KEY_HEADER}:{idempotency_key}".encode()
    )
    return hashlib.sha256(basis).hexdigest()[:32]


def message_id(topic: str, topic_id: str | None, partition: int, offset: int) -> str:
    """The `_id` of a quarantined message: its coordinates in this incarnation of the topic."""
    return f"{topic}:{topic_id or '-'}:{partition}:{offset}"


def pending_id(partition: int, first_offset: int, batch_token: str) -> str:
    """`_id` of a pending batch; sorting by it orders each partition's batches by offset."""
    return f"{partition:05d}:{first_offset:020d}:{batch_token}"


def _kafka_lineage(record: ConsumerRecord, topic_id: str | None) -> Document:
    timestamp = (
        datetime.fromtimestamp(record.timestamp / 1000, UTC) if record.timestamp >= 0 else None
    )
    return {
        "Topic": record.topic,
        "TopicId": topic_id,
        "Partition": record.partition,
        "Offset": record.offset,
        "Timestamp": timestamp,
    }


def event_document(
    event: UserEvent,
    record: ConsumerRecord,
    topic_id: str | None,
    idempotency_key: str | None = None,
) -> Document:
    """The stored form of a valid event: its canonical wire fields, `TimeStamp` as a date, the
    client's `IdempotencyKey` when it gave one, and where it came from in Kafka."""
    wire = canonical_wire(event)
    document: Document = {"_id": _identity(wire, idempotency_key), **wire}
    # A BSON date (millisecond precision) so time queries and sorting work in MongoDB.
    document["TimeStamp"] = event.timestamp
    if idempotency_key is not None:
        document["IdempotencyKey"] = idempotency_key
    document["Kafka"] = _kafka_lineage(record, topic_id)
    return document


def quarantine_document(record: ConsumerRecord, reason: str, topic_id: str | None) -> Document:
    """The stored form of a message that is not a valid event: the raw value and why."""
    raw: bytes | None = record.value
    text: str | None
    try:
        text, encoding = (raw.decode(), "utf-8") if raw is not None else (None, None)
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw or b"").decode(), "base64"
    return {
        "_id": message_id(record.topic, topic_id, record.partition, record.offset),
        "Reason": reason,
        "RawValue": text,
        "RawEncoding": encoding,
        "Kafka": _kafka_lineage(record, topic_id),
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


def prepare_batch(records: Iterable[ConsumerRecord], topic_id: str | None) -> Batch:
    """Validate polled records and turn them into the documents to store.

    `records` must be in offset order within each partition, as `poll` returns them.
    """
    batch = Batch()
    for record in records:
        batch.commit[TopicPartition(record.topic, record.partition)] = record.offset + 1
        batch.first_offsets.setdefault(record.partition, record.offset)
        try:
            event = parse_event(record.value)
            key = message_idempotency_key(record.headers)
        except ValueError as error:
            batch.quarantine.append(quarantine_document(record, invalid_reason(error), topic_id))
            continue
        batch.events.append(event_document(event, record, topic_id, key))
    return batch


def message_idempotency_key(headers: Sequence[tuple[str, bytes | None]] | None) -> str | None:
    """The `Idempotency-Key` header of a message (the API copies the client's), or None; a
    ValueError when it is not a valid key, as the API would have refused it."""
    values = [value for name, value in headers or () if name == IDEMPOTENCY_KEY_HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise ValueError(f"{IDEMPOTENCY_KEY_HEADER} header: {len(values)} of them, at most one")
    try:
        # Latin-1 reads any bytes, so a byte beyond ASCII gets the rule's own sentence.
        return idempotency_key((values[0] or b"").decode("latin-1"))
    except ValueError as error:
        raise ValueError(f"{IDEMPOTENCY_KEY_HEADER} header {error}") from None


def parse_event(raw: bytes | None) -> UserEvent:
    """The event a Kafka value holds, or ValueError saying why it is not one."""
    try:
        # Parsing and validating in one step (pydantic's JSON parser) is the fast, common path.
        return UserEvent.model_validate_json(raw or b"")
    except ValidationError:
        # The slow path only words the reason: not JSON, not an object, or which field is wrong.
        return UserEvent.model_validate(parse_json_object(raw))


def same_delivery(stored: Document, document: Document) -> bool:
    """Whether the stored event came from this very message (so it is being read again)."""
    keys = ("TopicId", "Partition", "Offset")
    return all(stored["Kafka"].get(key) == document["Kafka"][key] for key in keys)


def pending_batches(
    to_count: Sequence[Document], first_offsets: Mapping[int, int], batch_token: str
) -> list[Document]:
    """Pending-batch documents (one per partition) listing the offsets of `to_count` per pair."""
    pairs: dict[int, dict[tuple[str, str], list[int]]] = {}
    for document in to_count:
        lineage = document["Kafka"]
        by_pair = pairs.setdefault(lineage["Partition"], {})
        by_pair.setdefault((document["UserId"], document["EventName"]), []).append(
            lineage["Offset"]
        )
    topic_id = to_count[0]["Kafka"]["TopicId"] if to_count else None
    return [
        {
            "_id": pending_id(partition, first_offsets[partition], batch_token),
            "TopicId": topic_id,
            "Partition": partition,
            "FirstOffset": first_offsets[partition],
            "PairCount": len(by_pair),
            "Pairs": [
                {"UserId": user_id, "EventName": event_name, "Offsets": offsets}
                for (user_id, event_name), offsets in by_pair.items()
            ],
        }
        for partition, by_pair in sorted(pairs.items())
    ]


@dataclass
class Stored:
    """What storing one batch found: events new to the store, events this same message had
    stored before (read again after a crash), and events other messages had stored (duplicates)."""

    new: int = 0
    read_again: int = 0
    duplicates: int = 0


def store_batch(store: EventStore, batch: Batch, batch_token: str) -> Stored:
    """Write a batch in the order that makes a crash harmless (see the module's docstring)."""
    existed = store.insert_new(store.events, batch.events)
    stored = store.find_by_ids(
        store.events, (batch.events[i]["_id"] for i in existed), fields=("Kafka",)
    )
    result = Stored(new=len(batch.events) - len(existed))
    to_count = []
    for index, document in enumerate(batch.events):
        if index not in existed:
            to_count.append(document)
        elif same_delivery(stored[document["_id"]], document):
            result.read_again += 1
            to_count.append(document)
        else:
            result.duplicates += 1
    store.insert_new(store.quarantine, batch.quarantine)
    store.insert_new(store.pending, pending_batches(to_count, batch.first_offsets, batch_token))
    return result


def open_consumer(settings: Settings) -> KafkaConsumer:
    """A consumer that keeps its offsets under the drain's group and commits only when told to."""
    try:
        return KafkaConsumer(
            bootstrap_servers=settings.kafka_servers.split(","),
            group_id=settings.drain_group_id,
            client_id=f"{settings.drain_group_id}-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            # A new group starts with everything the topic holds: that is what is waiting.
            auto_offset_reset="earliest",
            max_poll_records=settings.drain_batch_size,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            bootstrap_timeout_ms=10_000,
        )
    except KafkaError as error:
        raise DrainError(
            f"Kafka is not reachable at {settings.kafka_servers}, so nothing was "
            "drained. Start the services with `task infra-up` (or check KAFKA_BOOTSTRAP_SERVERS)."
        ) from error


def partition_groups(settings: Settings) -> list[list[int]]:
    """The topic's partitions dealt round-robin into at most `drain_parallelism` groups: one
    drain each, e.g. one mapped DAG task each."""
    try:
        partitions = sorted(topic_partitions(settings, settings.topic_user_events))
    except Exception as error:
        raise DrainError(
            f"Topic {settings.topic_user_events} does not exist or Kafka does not describe it at "
            f"{settings.kafka_servers} ({error}). `task infra-up` starts Kafka and "
            "creates the lab's topics."
        ) from error
    groups = min(settings.drain_parallelism, len(partitions))
    return [partitions[start::groups] for start in range(groups)]


def drain_user_events(settings: Settings, partitions: Sequence[int] | None = None) -> DrainSummary:
    """Store every `UserEvents` message waiting in `partitions` (default: all) when the call
    starts.

    Commits the group's offsets after each stored batch. Raises DrainError, naming what to do,
    when Kafka or MongoDB fails; what was committed before stays stored, the rest is read again
    by the next run.
    """
    client = mongo_client(settings)
    try:
        consumer = open_consumer(settings)
        try:
            return _drain(consumer, EventStore.connect(settings, client), settings, partitions)
        finally:
            consumer.close(autocommit=False)
    finally:
        client.close()


def _store(store: EventStore, batch: Batch, settings: Settings) -> Stored:
    try:
        return store_batch(store, batch, uuid.uuid4().hex)
    except PyMongoError as error:
        raise DrainError(
            f"MongoDB at {settings.mongo_url} failed while storing a batch of "
            f"{len(batch.events) + len(batch.quarantine)} messages ({type(error).__name__}: "
            f"{error}). Their offsets were not committed, so nothing is lost: the next run reads "
            "them again. Check MongoDB with `task infra-status`; `task infra-up` starts it."
        ) from error


BATCH_COMMIT = (
    "The batch is stored in MongoDB but committing its Kafka offsets failed ({error}). Nothing "
    "is lost or duplicated: the next run reads it again and recognises what is already stored."
)
RESET_COMMIT = (
    "Committing the start offsets of the reset partitions failed ({error}); nothing was read "
    "yet. The next run tries again."
)


def _commit(
    consumer: KafkaConsumer, offsets: Mapping[TopicPartition, int], failed: str = BATCH_COMMIT
) -> None:
    """Commit `offsets`; on failure raise DrainError with `failed` (its `{error}` filled in)."""
    try:
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})
    except KafkaError as error:
        raise DrainError(
            failed.format(error=f"{type(error).__name__}: {error}")
            + " If this repeats, check Kafka with `task infra-status`."
        ) from error


def _take_bounds(
    consumer: KafkaConsumer,
    partitions: list[TopicPartition],
    recreated: set[int],
    summary: DrainSummary,
) -> dict[TopicPartition, int]:
    """Each partition's end offset now (where this run stops). A partition of a re-created
    topic, or whose committed offset is past its end (Kafka lost data), is read from its start."""
    ends: dict[TopicPartition, int] = consumer.end_offsets(partitions)
    reset: list[TopicPartition] = []
    for tp in partitions:
        committed = consumer.committed(tp)
        lost = committed is not None and committed > ends[tp]
        if tp.partition in recreated or lost:
            if lost and tp.partition not in recreated:
                log.warning(
                    "%s[%d]: the group committed offset %d but the partition ends at %d: Kafka "
                    "lost data (topic re-created or broker data wiped). Reading the partition "
                    "from its start; events already stored are recognised.",
                    tp.topic,
                    tp.partition,
                    committed,
                    ends[tp],
                )
            consumer.seek_to_beginning(tp)
            summary.resets += 1
            reset.append(tp)
    if reset:
        # Committed at once, before anything is read: the old offsets must not outlive this
        # run, which remembers the new topic id even when it stores nothing of a partition
        # (empty now, or not reached before a cap), or the next run would start at them.
        _commit(consumer, consumer.beginning_offsets(reset), RESET_COMMIT)
    return ends


def _topic_incarnation(
    store: EventStore, settings: Settings, partitions: list[int]
) -> tuple[str, set[int]]:
    """The topic's id now, and which of `partitions` a finished run last saw under another id."""
    topic = settings.topic_user_events
    try:
        now = current_topic_id(settings, topic)
    except Exception as error:
        raise DrainError(
            f"Topic {topic} does not exist or Kafka does not describe it at "
            f"{settings.kafka_servers} ({error}). `task infra-up` starts Kafka and "
            "creates the lab's topics."
        ) from error
    known = store.known_topic_ids(topic, partitions)
    recreated = {partition for partition, was in known.items() if was != now}
    if recreated:
        log.warning(
            "Topic %s was re-created or Kafka lost its data (topic id %s, was %s): its offsets "
            "start again. Reading partitions %s from their start; the events stored from the "
            "old topic stay, and each new event is stored and counted once.",
            topic,
            now,
            ", ".join(sorted({known[p] for p in recreated})),
            sorted(recreated),
        )
    return now, recreated


def _finish(
    consumer: KafkaConsumer, batch: Batch, storing: Future[Stored], summary: DrainSummary
) -> None:
    """Wait for a batch's store, commit its offsets, and add it to the summary."""
    stored = storing.result()
    _commit(consumer, batch.commit)
    summary.stored += stored.new
    summary.already_stored += stored.read_again
    summary.duplicates += stored.duplicates
    summary.quarantined += len(batch.quarantine)
    summary.batches += 1
    log.info(
        "batch %d: %d messages, %d new events, %d read again, %d duplicate deliveries, "
        "%d quarantined; committed %s",
        summary.batches,
        len(batch.events) + len(batch.quarantine),
        stored.new,
        stored.read_again,
        stored.duplicates,
        len(batch.quarantine),
        {tp.partition: offset for tp, offset in sorted(batch.commit.items())},
    )


def _drain(
    consumer: KafkaConsumer,
    store: EventStore,
    settings: Settings,
    partitions: Sequence[int] | None,
) -> DrainSummary:
    topic = settings.topic_user_events
    available = consumer.partitions_for_topic(topic)
    if not available:
        raise DrainError(
            f"Topic {topic} does not exist on {settings.kafka_servers}. "
            "`task infra-up` creates the lab's topics."
        )
    wanted = sorted(available if partitions is None else set(partitions))
    if missing := sorted(set(wanted) - available):
        raise DrainError(
            f"Topic {topic} has no partition {missing} (it has {sorted(available)}); the "
            "partition groups are taken again by the next run."
        )
    topic_id, recreated = _topic_incarnation(store, settings, wanted)
    summary = DrainSummary()
    assigned = [TopicPartition(topic, partition) for partition in wanted]
    consumer.assign(assigned)
    started = time.monotonic()
    # End offset of each partition at start: the run stops there.
    marks = _take_bounds(consumer, assigned, recreated, summary)
    # One batch is stored on a worker thread (MongoDB's time is spent waiting on a socket) while
    # the next is fetched and validated; each batch is committed after its own store, in order.
    in_flight: tuple[Batch, Future[Stored]] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="drain-store") as worker:
        while True:
            waiting = {tp: marks[tp] - consumer.position(tp) for tp in assigned}
            waiting = {tp: count for tp, count in waiting.items() if count > 0}
            summary.left = sum(waiting.values())
            if not waiting:
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
            records = [
                record
                for tp, part in polled.items()
                for record in part
                if record.offset < marks[tp]
            ]
            if not records:
                continue
            summary.consumed += len(records)
            batch = prepare_batch(records, topic_id)
            if in_flight is not None:
                _finish(consumer, *in_flight, summary)
            in_flight = (batch, worker.submit(_store, store, batch, settings))
        if in_flight is not None:
            _finish(consumer, *in_flight, summary)
    # The reset partitions' start offsets were committed before reading (`_take_bounds`), so
    # remembering the new id now is safe even for a run stopped by a cap.
    try:
        store.remember_topic_id(topic, wanted, topic_id)
    except PyMongoError as error:
        raise DrainError(
            f"MongoDB at {settings.mongo_url} failed while recording the drain's state "
            f"({error}). What was stored is committed; `task infra-status` checks MongoDB."
        ) from error
    summary.seconds = round(time.monotonic() - started, 3)
    log.info("drain of %s finished: %s", topic, summary)
    return summary
