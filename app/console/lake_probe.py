"""Probes of the lake: the purchases prefix, quarantined rows, the last hour's best sellers.

Files are read through the sink's commit log (`committed_files`), as Spark reads them, and each
committed file only once: a committed file never changes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.console.probes import Reading
from app.core.clients import s3_filesystem
from app.core.config import Settings
from app.figures import lake_prefix
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
    """Rows the stream put in quarantine: the footers of its committed files (cached by name)."""
    fs = s3_filesystem(settings)
    files = committed_files(settings, settings.purchases_quarantine_url)
    for path in files:
        if path not in row_counts:
            with fs.open(path) as handle:
                row_counts[path] = pq.ParquetFile(handle).metadata.num_rows
    return Reading({"quarantined_rows": sum(row_counts[path] for path in files)})


class BestSellers:
    """Units sold per product over the last hour, from the committed files of the recent
    `ingest_date` partitions. Each file is read once (committed files never change); its
    product lines are kept while they are younger than the window."""

    def __init__(self, settings: Settings, window: timedelta = timedelta(hours=1)) -> None:
        self.settings = settings
        self.window = window
        # None: a file whose orders are all older than the window, never read again.
        self.lines: dict[str, pa.Table | None] = {}

    def _product_lines(self, path: str) -> pa.Table:
        fs = s3_filesystem(self.settings)
        orders = pq.read_table(path, filesystem=fs, columns=["OrderId", "TimeStamp", "Products"])
        parent = pc.list_parent_indices(orders["Products"])
        items = pc.list_flatten(orders["Products"])
        return pa.table(
            {
                "OrderId": pc.take(orders["OrderId"], parent),
                "TimeStamp": pc.take(orders["TimeStamp"], parent),
                "ProductId": pc.struct_field(items, "ProductId"),
                "ItemCount": pc.struct_field(items, "ItemCount"),
            }
        )

    @staticmethod
    def _recent(lines: pa.Table | None, since: datetime) -> pa.Table | None:
        if lines is None:
            return None
        lines = lines.filter(pc.greater_equal(lines["TimeStamp"], pa.scalar(since)))
        return lines if lines.num_rows else None

    def reading(self, n: int = 10) -> Reading:
        now = datetime.now(UTC)
        since = now - self.window
        recent = {(now - timedelta(days=d)).date().isoformat() for d in (0, 1)}
        files = [
            path
            for path in committed_files(self.settings, self.settings.purchases_url)
            if (m := PARTITION.search(path)) and m.group(1) in recent
        ]
        self.lines = {
            path: self._recent(
                self.lines[path] if path in self.lines else self._product_lines(path), since
            )
            for path in files
        }
        kept = [table for table in self.lines.values() if table is not None]
        if not kept:
            return Reading({"top_products": []})
        lines = pa.concat_tables(kept)
        # A re-delivered order is in the lake twice: count each (order, product) line once.
        lines = lines.group_by(["OrderId", "ProductId"]).aggregate([("ItemCount", "max")])
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
