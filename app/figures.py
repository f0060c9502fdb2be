"""The lab's figures that `task status` prints and the console draws, each read one way.

Kafka's offsets, lag, gaps and replicas come from `app.core.topics`; this module reads the rest:
the documents in MongoDB, the Parquet files under a lake prefix and the rows of the repeat-
purchases table. `app.status` turns them into lines, `app.console` into its hops' figures, so
the two never disagree on what a figure means or how it is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.core.clients import s3_filesystem
from app.core.config import Settings
from app.lake.schema import PARTITION_COLUMN
from app.pipeline.store import EventStore

PARTITION = re.compile(rf"{PARTITION_COLUMN}=(\d{{4}}-\d{{2}}-\d{{2}})")


def mongo_documents(store: EventStore) -> dict[str, int]:
    """Documents in the events, counts and quarantine collections, by collection name
    (estimated counts: metadata only, no scan)."""
    return {
        collection.name: collection.estimated_document_count()
        for collection in (store.events, store.counts, store.quarantine)
    }


@dataclass(frozen=True)
class LakePrefix:
    url: str
    files: int
    bytes: int
    newest_ingest_date: str | None


def lake_prefix(settings: Settings, prefix: str) -> LakePrefix:
    """The Parquet files under `prefix` of the lake's bucket (one listing), their bytes and the
    newest `ingest_date` partition."""
    fs = s3_filesystem(settings)
    root = f"{settings.s3_bucket}/{prefix}"
    found = fs.find(root, detail=True) if fs.exists(root) else {}
    parquet = {path: info for path, info in found.items() if path.endswith(".parquet")}
    dates = sorted({m.group(1) for path in parquet if (m := PARTITION.search(path))})
    return LakePrefix(
        url=f"s3://{root}",
        files=len(parquet),
        bytes=sum(int(info.get("size", 0)) for info in parquet.values()),
        newest_ingest_date=dates[-1] if dates else None,
    )


@dataclass(frozen=True)
class TableRows:
    table: str
    rows: int | None  # None: no table yet
    written: str | None = None  # when its file last changed (ISO 8601), if the server says


def repeat_purchases_rows(settings: Settings, cur: Any) -> TableRows:
    """Rows in `repeat_purchases` and when its file last changed, on the cursor `cur`."""
    from psycopg2 import sql

    table = settings.repeat_purchases_table
    cur.execute("SELECT to_regclass(%s)", (table,))
    if cur.fetchone()[0] is None:
        return TableRows(table, None)
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    rows = int(cur.fetchone()[0])
    return TableRows(table, rows, _relation_modified(cur, table))


def _relation_modified(cur: Any, table: str) -> str | None:
    # The replacement rewrites the table's heap file; reading its time needs a superuser (the
    # lab's login is one), so a server where it is not says "unknown" instead of failing.
    try:
        cur.execute("SELECT (pg_stat_file(pg_relation_filepath(%s))).modification", (table,))
        modified: datetime = cur.fetchone()[0]
    except Exception:
        cur.connection.rollback()
        return None
    return modified.astimezone(UTC).isoformat()
