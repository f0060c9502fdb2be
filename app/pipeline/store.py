"""MongoDB collections of the pipeline, their indexes, and the reads and writes the logic needs.

The drain and the counts refresh call these methods instead of issuing queries themselves, so the
quirks of the local MongoDB stand-in (FerretDB 1.x on SQLite uses an index for `_id` equality and,
with the lab's build patch, for `_id` `$in`, and for nothing else) stay here and the logic reads as
the algorithm.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo import ASCENDING, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure

from app.core.clients import Document, mongo
from app.core.config import Settings
from app.core.topics import lost_offsets_line

DUPLICATE_KEY = 11000
NAMESPACE_NOT_FOUND = 26
# Updates per `update` command. Unpatched FerretDB 1.24 holds a connection per matched statement
# until the command ends, and hangs once its pool (100) is exhausted; see infra/ferretdb/build.sh.
UPDATES_PER_COMMAND = 50
# Ids per `$in` lookup: one query instead of one per id (measured 0.2 against 0.7 ms per stored
# document on the stand-in, and nothing for ids that are not stored), far below the 30,000 that
# the stand-in's patch pushes down to its `_id` index. Not more: the stand-in checks each row it
# returns against the whole list again (measured per document: 266 µs at 5,000 ids, 110 at 1,000,
# 104 at 250).
IDS_PER_QUERY = 1000


@dataclass(frozen=True)
class PartitionState:
    """What the drains recorded of one partition: the topic's id (None: nothing recorded), the
    partition's epoch (raised each time its offsets went back under the same topic id: its data
    was lost) and the highest end offset a drain saw in that epoch."""

    topic_id: str | None = None
    epoch: int = 0
    high_water: int = 0


class EventStore:
    """Raw events, per-user counts, quarantined messages, and the counting bookkeeping."""

    def __init__(self, database: Database[Document], settings: Settings) -> None:
        self.write_threads = settings.counts_write_threads
        self.events: Collection[Document] = database[settings.mongo_events_collection]
        self.counts: Collection[Document] = database[settings.mongo_counts_collection]
        self.quarantine: Collection[Document] = database[settings.mongo_quarantine_collection]
        self.pending: Collection[Document] = database[settings.mongo_pending_collection]
        self.drain_state: Collection[Document] = database[settings.mongo_drain_state_collection]

    @classmethod
    def connect(cls, settings: Settings, client: MongoClient[Document]) -> EventStore:
        """The store on `client`, which the caller keeps and closes."""
        return cls(client[settings.mongo_database], settings)

    @classmethod
    @contextmanager
    def open(cls, settings: Settings) -> Iterator[EventStore]:
        """The store on a client of its own, closed when the block ends."""
        with mongo(settings) as client:
            yield cls.connect(settings, client)

    def ensure_indexes(self) -> list[str]:
        # Counts are read and written by `_id` only; this index serves people's queries by user.
        self.counts.create_index(
            [("UserId", ASCENDING), ("EventName", ASCENDING)], unique=True, name="user_event_pair"
        )
        return [f"mongo {self.counts.full_name}: unique index (UserId, EventName)"]

    @staticmethod
    def document_count(collection: Collection[Document]) -> int:
        """Documents in `collection` (0 if it does not exist) from `$collStats`: the stand-in
        answers `count` (`estimated_document_count`) by decoding every document."""
        try:
            [stats] = collection.aggregate([{"$collStats": {"count": {}}}])
        except OperationFailure as exc:
            if exc.code == NAMESPACE_NOT_FOUND:
                return 0
            raise
        return int(stats["count"])

    @staticmethod
    def insert_new(collection: Collection[Document], documents: Sequence[Document]) -> set[int]:
        """Insert documents whose `_id` is not stored yet; return the indexes of those that were.

        Only duplicate-key errors are expected (a message read again, an event delivered
        twice); any other error is raised.
        """
        if not documents:
            return set()
        try:
            collection.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            details = error.details
            errors = details.get("writeErrors", [])
            if details.get("writeConcernErrors") or any(
                e.get("code") != DUPLICATE_KEY for e in errors
            ):
                raise
            return {int(e["index"]) for e in errors}
        return set()

    @staticmethod
    def find_by_ids(
        collection: Collection[Document], ids: Iterable[str], fields: Sequence[str] = ()
    ) -> dict[str, Document]:
        """The stored documents among `ids`, by `_id` (only `fields` when given)."""
        wanted = sorted(set(ids))
        projection = dict.fromkeys(fields, 1) if fields else None
        found: dict[str, Document] = {}
        for start in range(0, len(wanted), IDS_PER_QUERY):
            chunk = wanted[start : start + IDS_PER_QUERY]
            for document in collection.find({"_id": {"$in": chunk}}, projection):
                found[document["_id"]] = document
        return found

    def write_counts(self, documents: Sequence[Document], existing: set[str]) -> set[str]:
        """Store counts documents whole, each only if nobody changed it since it was read; return
        the `_id`s that may not have been written (another refresh got there first): read them
        again and redo them.

        Each document carries a `Version` that every write raises by one. A document whose `_id`
        is in `existing` is updated where its `Version` is still the one read (`_id` plus a field
        in the filter: the stand-in still finds it by its `_id` index), the others inserted: an
        insert that meets a duplicate key lost a race too. Updates go several commands at a time
        (each document is in one of them, so their order does not matter); a command reports
        only how many matched, so a command short of its size returns all its `_id`s.
        """
        lost: set[str] = set()
        new = [
            {**document, "Version": 1} for document in documents if document["_id"] not in existing
        ]
        if new:
            lost |= {new[index]["_id"] for index in self.insert_new(self.counts, new)}
        updates = [
            (
                document["_id"],
                UpdateOne(
                    # A document from before versions has none: `None` matches a missing field.
                    {"_id": document["_id"], "Version": document.get("Version")},
                    {
                        "$set": {
                            **{k: v for k, v in document.items() if k not in ("_id", "Version")},
                            "Version": (document.get("Version") or 0) + 1,
                        }
                    },
                ),
            )
            for document in documents
            if document["_id"] in existing
        ]
        commands = [
            updates[start : start + UPDATES_PER_COMMAND]
            for start in range(0, len(updates), UPDATES_PER_COMMAND)
        ]

        def run(command: list[tuple[str, UpdateOne]]) -> set[str]:
            result = self.counts.bulk_write([update for _, update in command], ordered=False)
            return set() if result.matched_count == len(command) else {key for key, _ in command}

        with ThreadPoolExecutor(self.write_threads, thread_name_prefix="counts-write") as pool:
            # Iterating the results re-raises the first failed command's error.
            for missed in pool.map(run, commands):
                lost |= missed
        return lost

    def pending_batches(self) -> Iterable[Document]:
        """Every pending batch, in `_id` order (per partition, by first offset)."""
        return self.pending.find().sort("_id", 1)

    def drop_pending(self, batches: Sequence[Document]) -> None:
        for start in range(0, len(batches), IDS_PER_QUERY):
            chunk = [batch["_id"] for batch in batches[start : start + IDS_PER_QUERY]]
            self.pending.delete_many({"_id": {"$in": chunk}})

    def partition_states(self, topic: str, partitions: Iterable[int]) -> dict[int, PartitionState]:
        """What the drains recorded of each of `partitions` (an empty state where none did).
        Per partition, so parallel drains of different partitions never take each other's
        record for their own; a record for the whole topic (written by labs before drains ran
        in parallel) gives the id of each partition without one."""
        wanted = list(partitions)
        found = self.find_by_ids(self.drain_state, [topic, *(f"{topic}[{p}]" for p in wanted)])
        whole = found.get(topic, {}).get("TopicId")
        states = {}
        for partition in wanted:
            record = found.get(f"{topic}[{partition}]", {})
            states[partition] = PartitionState(
                record.get("TopicId", whole), record.get("Epoch", 0), record.get("HighWater", 0)
            )
        return states

    def remember_partitions(self, topic: str, states: Mapping[int, PartitionState]) -> None:
        for partition, state in states.items():
            self.drain_state.replace_one(
                {"_id": f"{topic}[{partition}]"},
                {
                    "TopicId": state.topic_id,
                    "Epoch": state.epoch,
                    "HighWater": state.high_water,
                    "UpdatedAt": datetime.now(UTC),
                },
                upsert=True,
            )

    def record_gaps(self, topic: str, gaps: Sequence[Document]) -> None:
        """Keep offsets the drain found lost (fields `Partition`, `TopicId`, `Epoch`, `First`,
        `End`, `Lost`, `Reason`), for `task status` and the console; a gap found twice (its
        commit failed) is kept once."""
        self.insert_new(
            self.drain_state,
            [
                {
                    "_id": f"{topic}[{gap['Partition']}] lost {gap['TopicId']}/{gap['Epoch']}"
                    f"@{gap['First']}",
                    "Kind": "gap",
                    "Topic": topic,
                    **gap,
                    "FoundAt": datetime.now(UTC),
                }
                for gap in gaps
            ],
        )

    def recorded_gap_lines(self, topic: str, limit: int = 5) -> list[str]:
        """The latest gaps the drains of `topic` found, newest first, a line each (a scan: the
        collection holds a document per partition and per gap)."""
        found = self.drain_state.find({"Kind": "gap", "Topic": topic}).sort("FoundAt", -1)
        return [
            f"{lost_offsets_line(topic, gap['Partition'], gap['Lost'], gap['Reason'])}: offsets "
            f"{gap['First']:,}-{gap['End'] - 1:,}, found {gap['FoundAt']:%Y-%m-%d %H:%M} UTC"
            for gap in found.limit(limit)
        ]
