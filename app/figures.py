"""The lab's figures that `task status` prints and the console draws, each read one way.

Kafka's offsets, lag, gaps and replicas come from `app.core.topics`; this module reads the rest:
the documents in MongoDB, the Parquet files under a lake prefix, the orders committed to the lake
(and their conflicting versions) and the rows of the repeat-purchases table. `app.status` turns
them into lines, `app.console` into its hops' figures, so the two never disagree on what a figure
means or how it is read.

Lake files are read through pyarrow's own S3 client, many at once, and only the columns a figure
needs: a committed file never changes, so a long-running reader (the console) reads each once and
a one-shot one (`task status`) pays per file no more than one small request or two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from app.core.clients import arrow_s3_filesystem, s3_filesystem
from app.core.config import Settings
from app.lake.schema import PARTITION_COLUMN
from app.pipeline.store import EventStore

if TYPE_CHECKING:
    from app.analysis.conflicts import Conflict

PARTITION = re.compile(rf"{PARTITION_COLUMN}=(\d{{4}}-\d{{2}}-\d{{2}})")


def mongo_documents(store: EventStore) -> dict[str, int]:
    """Documents in the events, counts and quarantine collections, by collection name (0 for a
    collection not created yet).

    From `$collStats`' count: MongoDB keeps it in the collection's metadata, and the local
    stand-in (FerretDB on SQLite) sums its table pages' row counts without decoding a document.
    Not `estimated_document_count`: the stand-in answers its `count` command by reading and
    decoding every document (measured 4.0 s against 0.1 s on 41,000 events), which the console,
    asking every 2 s, kept going all the time once the collection was large.
    """
    return {
        collection.name: EventStore.document_count(collection)
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


def read_committed(
    settings: Settings, files: list[str], columns: list[str], where: pc.Expression | None = None
) -> dict[str, pa.Table]:
    """The rows of each lake file in `files` (s3 keys, as `committed_files` lists them), only
    `columns` and only the rows `where` holds, by key, in one scan over pyarrow's I/O threads.
    With no column, only the footers are read: each table has just its row count."""
    if not files:
        return {}
    scanner = ds.dataset(files, filesystem=arrow_s3_filesystem(settings), format="parquet")
    scanner = scanner.scanner(columns=columns, filter=where)
    batches: dict[str, list[pa.RecordBatch]] = {path: [] for path in files}
    for tagged in scanner.scan_batches():
        batches[tagged.fragment.path].append(tagged.record_batch)
    return {
        path: pa.Table.from_batches(found, schema=scanner.projected_schema)
        for path, found in batches.items()
    }


@dataclass(frozen=True)
class LakeOrders:
    rows: int
    order_ids: int
    conflicts: dict[str, Conflict]  # OrderId -> its versions, for ids with more than one


def committed_orders(settings: Settings, files: list[str]) -> LakeOrders:
    """The rows and distinct `OrderId`s in the committed `files`, and the conflicting ones
    (`app.analysis.conflicts`). Only the `OrderId` column of every file is read; a whole order
    only for ids stored more than once, and only from the files that hold them."""
    from app.analysis.conflicts import COLUMNS, conflicting_orders

    ids = read_committed(settings, files, ["OrderId"])
    counts = pa.concat_tables(ids.values()).group_by("OrderId").aggregate([("OrderId", "count")])
    repeated = counts.filter(pc.greater(counts["OrderId_count"], 1))["OrderId"]
    rows = sum(table.num_rows for table in ids.values())
    if len(repeated) == 0:
        return LakeOrders(rows, counts.num_rows, {})
    holding = [
        path for path, table in ids.items() if pc.any(pc.is_in(table["OrderId"], repeated)).as_py()
    ]
    copies = read_committed(settings, holding, COLUMNS, pc.field("OrderId").isin(repeated))
    # Every copy of each repeated id: the conflict rule sees what it would see on the whole lake.
    conflicts = conflicting_orders(pa.concat_tables(copies.values()))
    return LakeOrders(rows, counts.num_rows, conflicts)


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
