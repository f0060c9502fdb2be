"""Benchmark: `task status`'s lake figures and the console's lake probes on a lake of many small
files, next to the same orders committed in one file (the baseline), in one run.

Builds two lakes on the lab's S3 under a prefix of the bench's own, each with a `_spark_metadata`
log as the stream writes it: the same orders (a few re-delivered, a few conflicting) committed
once as `--files` small batches, once as a single file. Then, on each lake:

- `task status`'s conflict check (`app.status.lake_orders`; target: within 1.5 x the one-file
  lake, as issue 20 asks of `task status` after many micro-batches);
- the console's last-hour best sellers and quarantine probe: its first poll (every file new to
  it) and a later poll after one more batch (target: a later poll costs about one file, however
  many came before).

The prefixes are removed afterwards.

    .venv/bin/python bench/bench_lake_reads.py [--orders N] [--files N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Run as a script from anywhere: the repository root holds the `app` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_analysis import generate_orders

from app.console.lake_probe import BestSellers, quarantine_reading
from app.core.clients import s3_filesystem
from app.core.config import Settings, get_settings
from app.lake.schema import PARTITION_COLUMN
from app.status import lake_orders

T = TypeVar("T")
CONFLICTS = 5  # orders sent again with other content


def recent_orders(orders: int) -> pa.Table:
    """`orders` orders of the last 50 minutes (the console's best sellers keep the last hour),
    re-deliveries included, and `CONFLICTS` of them again with another payment type."""
    table = generate_orders(orders).drop_columns([PARTITION_COLUMN])
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    window_us = 50 * 60 * 1_000_000
    # Each order keeps its time across re-deliveries; Kafka's times follow the rows' order.
    number = pc.cast(pc.utf8_slice_codeunits(table["OrderId"], 1), pa.int64()).to_numpy()
    ordered = now_us - window_us + (number * 7_919) % window_us
    received = now_us - window_us + np.arange(table.num_rows) * (window_us // table.num_rows)
    for name, stamps in (("TimeStamp", ordered), ("kafka_timestamp", received)):
        column = pa.array(stamps, pa.timestamp("us", "UTC"))
        table = table.set_column(table.schema.get_field_index(name), name, column)
    changed = table.slice(0, CONFLICTS)
    payment = pa.array(["Changed"] * CONFLICTS, table.schema.field("PaymentType").type)
    changed = changed.set_column(
        changed.schema.get_field_index("PaymentType"), "PaymentType", payment
    )
    offset = changed.schema.get_field_index("kafka_offset")
    changed = changed.set_column(offset, "kafka_offset", pc.add(changed["kafka_offset"], 10**9))
    return pa.concat_tables([table, changed.cast(table.schema)])


def commit_batches(settings: Settings, batches: list[pa.Table], first: int = 0) -> None:
    """Write each table as one file of today's partition and commit it as batch `first`, ...,
    with the sink log laid out as Spark's: every tenth entry compacts all before it."""
    fs = s3_filesystem(settings)
    root = f"{settings.s3_bucket}/{settings.s3_purchases_prefix}".rstrip("/")
    day = datetime.now(UTC).date().isoformat()
    numbers = range(first, first + len(batches))
    # A compaction lists every batch so far: only one among the batches written here.
    assert first == 0 or all((batch + 1) % 10 for batch in numbers)

    def write(table: pa.Table) -> str:
        path = f"{root}/{PARTITION_COLUMN}={day}/part-{uuid.uuid4()}.parquet"
        with fs.open(path, "wb") as handle:
            pq.write_table(table, handle)
        entry = {"path": f"s3a://{path}", "size": fs.size(path), "isDir": False, "action": "add"}
        return json.dumps(entry)

    def commit(batch: int) -> None:
        compact = (batch + 1) % 10 == 0
        name = f"{batch}.compact" if compact else str(batch)
        body = "\n".join(entries[: batch + 1] if compact else [entries[batch - first]])
        fs.pipe_file(f"{root}/_spark_metadata/{name}", f"v1\n{body}\n".encode())

    with ThreadPoolExecutor(8) as pool:
        entries = list(pool.map(write, batches))
        list(pool.map(commit, numbers))


def timed(action: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def measure(settings: Settings, extra: pa.Table, batches: int) -> dict[str, float]:
    seconds, lines = timed(lambda: lake_orders(settings))
    assert f"CONFLICT: {CONFLICTS} OrderIds" in lines[-1], lines
    figures = {"task status lake_orders": seconds}
    best = BestSellers(settings)
    quarantine: dict[str, int] = {}
    figures["console best sellers, first poll"] = timed(best.reading)[0]
    figures["console quarantine, first poll"] = timed(
        lambda: quarantine_reading(settings, quarantine)
    )[0]
    commit_batches(settings, [extra], first=batches)
    figures["console best sellers, next poll"] = timed(best.reading)[0]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=15_000)
    parser.add_argument("--files", type=int, default=1_000)
    args = parser.parse_args()
    base = get_settings()
    tag = uuid.uuid4().hex[:8]
    orders = recent_orders(args.orders)
    extra = orders.slice(0, 20)
    fs = s3_filesystem(base)
    lakes = {
        name: base.model_copy(
            update={
                "s3_purchases_prefix": f"bench-reads-{tag}/{name}/purchased_items/",
                # The quarantine probe reads the same committed files: their footers.
                "s3_quarantine_prefix": f"bench-reads-{tag}/{name}/purchased_items/",
            }
        )
        for name in ("one", "many")
    }
    try:
        started = time.perf_counter()
        commit_batches(lakes["one"], [orders])
        size = -(-orders.num_rows // args.files)
        batches = [orders.slice(start, size) for start in range(0, orders.num_rows, size)]
        commit_batches(lakes["many"], batches)
        print(
            f"{orders.num_rows:,} rows committed as 1 file and as {len(batches):,} files "
            f"in {time.perf_counter() - started:.1f} s"
        )
        one = measure(lakes["one"], extra, 1)
        many = measure(lakes["many"], extra, len(batches))
    finally:
        fs.rm(f"{base.s3_bucket}/bench-reads-{tag}", recursive=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{'figure':<38} {'1 file':>8} {f'{len(batches):,} files':>12} {'ratio':>7}")
    for name, seconds in many.items():
        print(f"{name:<38} {one[name]:>7.2f}s {seconds:>11.2f}s {seconds / one[name]:>6.1f}x")
    print(f"\ntarget: task status within 1.5 x the one-file lake; load average {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
