"""Probes of the lake: the purchases prefix, quarantined rows, the last hour's best sellers, and
the records the stream has not read that Kafka's retention deletes soon.

Files are read through the sink's commit log (`committed_files`), as Spark reads them, and each
committed file only once: a committed file never changes. A file no longer listed (a compaction
replaced it) is forgotten.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import KafkaException

from app.console.probes import Reading
from app.core.config import Settings
from app.figures import lake_prefix, read_committed
from app.lake.gaps import retention_warnings
from app.lake.schema import PARTITION_COLUMN
from app.lake.sink_log import committed_files

PARTITION = re.compile(rf"{PARTITION_COLUMN}=(\d{{4}}-\d{{2}}-\d{{2}})")


def lake_reading(settings: Settings) -> Reading:
    """Parquet files and bytes under the purchases prefix, and the newest `ingest_date`."""
    lake = lake_prefix(settings, settings.s3_purchases_prefix)
    return Reading(
        {
            "prefix": lake.url,
            "files": lake.files,
            "bytes": lake.bytes,
            "newest_ingest_date": lake.newest_ingest_date,
        }
    )


def quarantine_reading(settings: Settings, row_counts: dict[str, int]) -> Reading:
    """Rows the stream put in quarantine: the footers of its committed files, each read once
    (`row_counts`, by key, kept for the listed files only: a compaction replaces files)."""
    files = committed_files(settings, settings.purchases_quarantine_url)
    new = [path for path in files if path not in row_counts]
    read = read_committed(settings, new, [])
    for gone in row_counts.keys() - set(files):
        del row_counts[gone]
    row_counts.update((path, table.num_rows) for path, table in read.items())
    return Reading({"quarantined_rows": sum(row_counts.values())})


def stream_retention_reading(settings: Settings) -> Reading:
    """Records the stream has not read that Kafka's retention deletes soon (`retention_warnings`).
    Kafka down is the Kafka hop's state, not the lake's: then there is nothing to add here."""
    try:
        return Reading({"stream_retention": retention_warnings(settings)})
    except KafkaException:
        return Reading()


class BestSellers:
    """Units sold per product over the last hour, from the committed files of the recent
    `ingest_date` partitions. Each file is read once (committed files never change): a poll
    reads only the files committed since the last one, and keeps the product lines younger
    than the window, so its cost follows the window's orders, not the lake's files."""

    def __init__(self, settings: Settings, window: timedelta = timedelta(hours=1)) -> None:
        self.settings = settings
        self.window = window
        # Each file read so far (and still listed) -> the number its lines carry in `lines`.
        self.numbers: dict[str, int] = {}
        self.next_number = 0
        self.lines = pa.table(
            {
                "file": pa.array([], pa.int64()),
                "OrderId": pa.array([], pa.string()),
                "TimeStamp": pa.array([], pa.timestamp("us", "UTC")),
                "ProductId": pa.array([], pa.string()),
                "ItemCount": pa.array([], pa.int64()),
            }
        )

    def _product_lines(self, number: int, orders: pa.Table) -> pa.Table:
        parent = pc.list_parent_indices(orders["Products"])
        items = pc.list_flatten(orders["Products"])
        lines = {
            "file": pa.array([number] * len(items), pa.int64()),
            "OrderId": pc.take(orders["OrderId"], parent),
            "TimeStamp": pc.take(orders["TimeStamp"], parent),
            "ProductId": pc.struct_field(items, "ProductId"),
            "ItemCount": pc.struct_field(items, "ItemCount"),
        }
        return pa.table(lines).cast(self.lines.schema)

    def _update(self, files: list[str], since: datetime) -> None:
        """Read the files not read yet; forget those no longer committed (a compaction
        replaced them, its new file lists their rows) and the lines older than `since`."""
        gone = [self.numbers.pop(path) for path in self.numbers.keys() - set(files)]
        new = [path for path in files if path not in self.numbers]
        columns = ["OrderId", "TimeStamp", "Products"]
        recent = pc.field("TimeStamp") >= pa.scalar(since)
        read = read_committed(self.settings, new, columns, recent)
        tables = [self.lines.filter(~pc.field("file").isin(gone)) if gone else self.lines]
        for path, orders in read.items():
            self.numbers[path] = self.next_number
            tables.append(self._product_lines(self.next_number, orders))
            self.next_number += 1
        lines = pa.concat_tables(tables)
        self.lines = lines.filter(pc.field("TimeStamp") >= pa.scalar(since)).combine_chunks()

    def reading(self, n: int = 10) -> Reading:
        now = datetime.now(UTC)
        recent = {(now - timedelta(days=d)).date().isoformat() for d in (0, 1)}
        files = [
            path
            for path in committed_files(self.settings, self.settings.purchases_url)
            if (m := PARTITION.search(path)) and m.group(1) in recent
        ]
        self._update(files, now - self.window)
        if not self.lines.num_rows:
            return Reading({"top_products": []})
        # A re-delivered order is in the lake twice: count each (order, product) line once.
        lines = self.lines.group_by(["OrderId", "ProductId"]).aggregate([("ItemCount", "max")])
        units = lines.group_by("ProductId").aggregate([("ItemCount_max", "sum")])
        top = units.sort_by([("ItemCount_max_sum", "descending"), ("ProductId", "ascending")])
        return Reading(
            {
                "top_products": [
                    {"product": row["ProductId"], "units": row["ItemCount_max_sum"]}
                    for row in top.slice(0, n).to_pylist()
                ]
            }
        )
