"""MongoDB collections of the pipeline and their indexes."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database

from app.core.config import Settings

Document = dict[str, Any]


def mongo_client(settings: Settings, timeout_ms: int = 5000) -> MongoClient[Document]:
    return MongoClient(
        settings.mongo_url,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 6, 30000),
        tz_aware=True,
    )


class EventStore:
    """Raw events, per-user counts, quarantined messages, and the counting bookkeeping."""

    def __init__(self, database: Database[Document], settings: Settings) -> None:
        self.events: Collection[Document] = database[settings.mongo_events_collection]
        self.counts: Collection[Document] = database[settings.mongo_counts_collection]
        self.quarantine: Collection[Document] = database[settings.mongo_quarantine_collection]
        self.pending: Collection[Document] = database[settings.mongo_pending_collection]

    @classmethod
    def connect(cls, settings: Settings, client: MongoClient[Document] | None = None) -> EventStore:
        client = client or mongo_client(settings)
        return cls(client[settings.mongo_database], settings)

    def ensure_indexes(self) -> list[str]:
        # Counting one (UserId, EventName) pair reads only that pair's index range.
        self.events.create_index([("UserId", ASCENDING), ("EventName", ASCENDING)])
        self.counts.create_index(
            [("UserId", ASCENDING), ("EventName", ASCENDING)], unique=True, name="user_event_pair"
        )
        return [
            f"mongo {self.events.full_name}: index (UserId, EventName)",
            f"mongo {self.counts.full_name}: unique index (UserId, EventName)",
        ]
