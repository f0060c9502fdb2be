"""Benchmark: the four lake analyses in Spark next to the same answers from DuckDB.

Generates (once, cached under `$LAB_HOME/bench/`) a lake of 1,000,000 orders (about 2.5 million
product lines, 0.5 % of the orders delivered twice) as local Parquet partitioned by `ingest_date`,
exactly as the stream lays it out. Local files rather than S3, so both engines read the same
bytes from the same disk and the figures measure the engines, not the local S3 server.

Then, in one run: the four analyses with the lab's Spark functions (`app.analysis.purchases`,
`local[2]`, tuned as the notebooks run it), the same four answers in DuckDB SQL, the ratio, a check
that both engines agree, and the repeat-purchases write to PostgreSQL with COPY next to
`executemany` (the baseline) when PostgreSQL answers.

    .venv/bin/python bench/bench_analysis.py [--orders N] [--regenerate]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Run as a script from anywhere: the repository root holds the `app` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.config import Settings, get_settings
from app.lake.schema import PARTITION_COLUMN, PURCHASE_ROW

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPAN = timedelta(hours=48)
USERS = 100_000
PRODUCTS = 5_000
DUPLICATE_SHARE = 0.005
ROWS_PER_FILE = 100_000
PAYMENT_TYPES = ["CreditCard", "DebitCard", "PayPal", "BankTransfer", "CashOnDelivery"]
PAYMENT_WEIGHTS = [0.42, 0.23, 0.18, 0.1, 0.07]
T = TypeVar("T")


def _ids(prefix: str, numbers: np.ndarray[Any, Any], width: int) -> pa.Array:
    return pa.array([f"{prefix}{n:0{width}d}" for n in numbers.tolist()], pa.string())


def generate_orders(orders: int, seed: int = 7) -> pa.Table:
    """`orders` orders in the lake's row layout, plus re-deliveries of a few of them."""
    from pyspark.sql.pandas.types import to_arrow_schema

    rng = np.random.default_rng(seed)
    lines_per_order = rng.integers(1, 5, orders)
    offsets = np.concatenate([[0], np.cumsum(lines_per_order)]).astype(np.int32)
    lines = int(offsets[-1])
    # A few products sell far more than the rest, as in a real shop; it makes repeats common.
    weights = 1.0 / np.arange(1, PRODUCTS + 1) ** 0.8
    product = rng.choice(PRODUCTS, size=lines, p=weights / weights.sum())
    unit_price = np.round(rng.uniform(1, 500, PRODUCTS), 2)
    count = rng.integers(1, 6, lines)
    discount = rng.choice([0.0, 0.05, 0.1, 0.2], size=lines)
    line_total = count * unit_price[product] * (1 - discount)
    total = np.round(np.add.reduceat(line_total, offsets[:-1]), 2)
    now_us = int(NOW.timestamp() * 1_000_000)
    ordered_at = now_us - rng.integers(0, int(SPAN.total_seconds() * 1_000_000), orders)
    products = pa.ListArray.from_arrays(
        offsets,
        pa.StructArray.from_arrays(
            [_ids("P", product, 5), pa.array(count), pa.array(unit_price[product]), discount],
            names=["ProductId", "ItemCount", "ItemPrice", "ItemDiscount"],
        ),
    )
    order_number = np.arange(orders)
    table = pa.table(
        {
            "SessionId": _ids("S", rng.integers(0, orders, orders), 8),
            "TimeStamp": pa.array(ordered_at, pa.timestamp("us", "UTC")),
            "UserId": _ids("U", rng.integers(0, USERS, orders), 6),
            "TotalPrice": total,
            "OrderId": _ids("O", order_number, 8),
            "Products": products,
            "PaymentType": pa.array(
                np.array(PAYMENT_TYPES)[rng.choice(5, size=orders, p=PAYMENT_WEIGHTS)]
            ),
        }
    )
    redelivered = table.take(rng.choice(orders, size=int(orders * DUPLICATE_SHARE), replace=False))
    table = pa.concat_tables([table, redelivered])
    rows = table.num_rows
    # Kafka hands the records to the stream a moment after they were ordered.
    received = table.column("TimeStamp").to_numpy().astype("int64") + rng.integers(
        1_000, 5_000_000, rows
    )
    table = table.append_column("kafka_partition", pa.array(np.arange(rows) % 3, pa.int32()))
    table = table.append_column("kafka_offset", pa.array(np.arange(rows) // 3, pa.int64()))
    table = table.append_column("kafka_timestamp", pa.array(received, pa.timestamp("us", "UTC")))
    day = (received // 86_400_000_000).astype("int32")
    table = table.append_column(PARTITION_COLUMN, pa.array(day, pa.date32()))
    return table.sort_by("kafka_timestamp").cast(to_arrow_schema(PURCHASE_ROW))


def write_lake(table: pa.Table, folder: Path) -> None:
    """Write `table` as `folder/ingest_date=YYYY-MM-DD/part-NNNNN.parquet`, Spark's layout."""
    days = table.column(PARTITION_COLUMN).to_pylist()
    for day in sorted(set(days)):
        part = table.filter(pa.compute.equal(table.column(PARTITION_COLUMN), day)).drop_columns(
            [PARTITION_COLUMN]
        )
        target = folder / f"{PARTITION_COLUMN}={day.isoformat()}"
        target.mkdir(parents=True)
        for number, start in enumerate(range(0, part.num_rows, ROWS_PER_FILE)):
            pq.write_table(
                part.slice(start, ROWS_PER_FILE), target / f"part-{number:05d}.snappy.parquet"
            )


def lake_folder(settings: Settings, orders: int, regenerate: bool) -> Path:
    folder = settings.lab_home / "bench" / f"purchases-{orders}"
    if regenerate and folder.exists():
        shutil.rmtree(folder)
    if not folder.exists():
        started = time.perf_counter()
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        write_lake(generate_orders(orders), staging)
        staging.rename(folder)
        print(f"generated {orders:,} orders in {time.perf_counter() - started:.1f} s")
    return folder


def timed(label: str, action: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    print(f"  {label:<34} {elapsed:6.2f} s")
    return result, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args()
    settings = get_settings()
    folder = lake_folder(settings, args.orders, args.regenerate)
    print(folder, date.today())
    return 0


if __name__ == "__main__":
    sys.exit(main())
