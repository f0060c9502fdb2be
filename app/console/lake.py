"""Probes of the purchases stream and the lake: Spark's progress, the bucket, recent best sellers.

Spark's progress is read from the stream's checkpoint rather than from Spark's REST API: the REST
API (`/api/v1`) has no Structured Streaming progress (its streaming endpoints are the old
DStreams'), the UI's port moves (4040, 4041, ...) and vanishes when the job stops, while the
checkpoint is on local disk, survives restarts and is the very record of what is committed.
Each micro-batch writes `offsets/<id>` (the Kafka end offsets it will read) when it starts and
`commits/<id>` when its files are committed, so the two files' times give its duration and the
offsets give its row count.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.console.probes import Reading
from app.core.config import Settings
from app.lake.schema import PARTITION_COLUMN
from app.lake.storage import s3_filesystem
from app.lake.stream import committed_files, sinks

PARTITION = re.compile(rf"{PARTITION_COLUMN}=(\d{{4}}-\d{{2}}-\d{{2}})")


def _batch_ids(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _offset_total(path: Path) -> int:
    # Line 1 is the log version, line 2 the batch's metadata, then one JSON per source:
    # {"<topic>": {"<partition>": <end offset>, ...}}.
    total = 0
    for line in path.read_text().splitlines()[2:]:
        for partitions in json.loads(line).values():
            total += sum(partitions.values())
    return total


def stream_job_running(settings: Settings) -> bool | None:
    """Whether a stream job holds the checkpoint's lock (`app.lake.stream.checkpoint_lock`).

    Read from the kernel's lock table, never by taking the lock: a probe holding it even for a
    moment could make a starting job exit. None where there is no /proc/locks (not Linux).
    """
    locks = Path("/proc/locks")
    lock_file = Path(settings.checkpoint_dir) / "job.lock"
    if not locks.exists():
        return None
    if not lock_file.exists():
        return False
    info = lock_file.stat()
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    return any(device in line.split() for line in locks.read_text().splitlines())


def spark_reading(settings: Settings) -> Reading:
    """The purchases query's last committed batch: id, rows, duration, rows/s, freshness."""
    checkpoint = Path(sinks(settings)[0].checkpoint)
    running = stream_job_running(settings)
    down = (
        "no stream job holds the checkpoint (the Procfile's `spark` process is not running)"
        if running is False
        else None
    )
    commits = _batch_ids(checkpoint / "commits")
    if not commits:
        return Reading({"checkpoint": str(checkpoint), "batch": None}, down=down)
    batch = commits[-1]
    offsets = checkpoint / "offsets"
    started = (offsets / str(batch)).stat().st_mtime
    committed = (checkpoint / "commits" / str(batch)).stat().st_mtime
    previous = offsets / str(batch - 1)
    rows = _offset_total(offsets / str(batch)) - (
        _offset_total(previous) if previous.exists() else 0
    )
    duration = max(committed - started, 1e-3)
    figures: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "batch": batch,
        "rows": rows,
        "duration": round(duration, 2),
        "rows_per_second": round(rows / duration, 1),
        "committed_ago": round(time.time() - committed, 1),
        "running": bool(_batch_ids(offsets)) and _batch_ids(offsets)[-1] > batch,
    }
    # A record that reached Kafka just after the previous batch fixed its end offsets waits for
    # this batch, and is readable once it commits: the longest POST-to-readable of this batch.
    if previous.exists():
        figures["freshness"] = round(committed - previous.stat().st_mtime, 1)
    return Reading(figures, {"spark_rows": _offset_total(offsets / str(batch))}, down=down)


def lake_reading(settings: Settings) -> Reading:
    """Parquet files and bytes under the purchases prefix, and the newest `ingest_date`."""
    fs = s3_filesystem(settings)
    root = f"{settings.s3_bucket}/{settings.s3_purchases_prefix}"
    found = fs.find(root, detail=True) if fs.exists(root) else {}
    parquet = {path: info for path, info in found.items() if path.endswith(".parquet")}
    dates = sorted({m.group(1) for path in parquet if (m := PARTITION.search(path))})
    return Reading(
        {
            "prefix": f"s3://{root}",
            "files": len(parquet),
            "bytes": sum(int(info.get("size", 0)) for info in parquet.values()),
            "newest_ingest_date": dates[-1] if dates else None,
        }
    )


def quarantine_reading(settings: Settings, row_counts: dict[str, int]) -> Reading:
    """Rows the stream put in quarantine: the footers of its committed files (cached by name,
    a committed file never changes)."""
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
