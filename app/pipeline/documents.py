"""The documents the drain stores, made from Kafka records: pure functions, no I/O.

An event's `_id` is its identity (`event_id`): the client's `Idempotency-Key` when it sent one,
else a fingerprint of the event's canonical form, so a retried event is one document wherever
Kafka put its copies. A quarantined message is keyed by its Kafka coordinates. A *pending batch*
lists, per (UserId, EventName) pair, the offsets the counts refresh will count. The drain
(`app.pipeline.drain`) polls, stores these in order and commits; tests call these directly.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import ValidationError

from app.core.clients import Document
from app.schemas import (
    IDEMPOTENCY_KEY_HEADER,
    UserEvent,
    canonical_json,
    canonical_wire,
    idempotency_key,
    parse_json_object,
)


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


def message_id(
    topic: str, topic_id: str | None, partition: int, offset: int, epoch: int = 0
) -> str:
    """The `_id` of a quarantined message: its coordinates in this incarnation of the topic
    (and epoch of the partition, after its offsets went back)."""
    return f"{topic}:{topic_id or '-'}:{partition}:{offset}" + (f":{epoch}" if epoch else "")


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
    same_place = all(stored["Kafka"].get(key) == document["Kafka"][key] for key in keys)
    return same_place and stored["Kafka"].get("Epoch", 0) == document["Kafka"].get("Epoch", 0)


def in_epochs(batch: Batch, epochs: Mapping[int, int]) -> Batch:
    """Stamp a prepared batch's documents with their partition's epoch where it is not the
    first: after a partition's offsets went back, the same offset is another message."""
    for document in batch.events:
        if epoch := epochs.get(document["Kafka"]["Partition"], 0):
            document["Kafka"]["Epoch"] = epoch
    for document in batch.quarantine:
        lineage = document["Kafka"]
        if epoch := epochs.get(lineage["Partition"], 0):
            lineage["Epoch"] = epoch
            # A quarantined message is keyed by its coordinates, which now include the epoch.
            document["_id"] = message_id(
                lineage["Topic"], lineage["TopicId"], lineage["Partition"], lineage["Offset"], epoch
            )
    return batch


def pending_batches(
    to_count: Sequence[Document], first_offsets: Mapping[int, int], batch_token: str
) -> list[Document]:
    """Pending-batch documents (one per partition) listing the offsets of `to_count` per pair."""
    pairs: dict[int, dict[tuple[str, str], list[int]]] = {}
    lineages: dict[int, Document] = {}
    for document in to_count:
        lineage = lineages.setdefault(document["Kafka"]["Partition"], document["Kafka"])
        by_pair = pairs.setdefault(lineage["Partition"], {})
        by_pair.setdefault((document["UserId"], document["EventName"]), []).append(
            document["Kafka"]["Offset"]
        )
    return [
        {
            "_id": pending_id(partition, first_offsets[partition], batch_token),
            "TopicId": lineages[partition]["TopicId"],
            "Epoch": lineages[partition].get("Epoch", 0),
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
