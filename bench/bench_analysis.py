"""Benchmark: the four lake analyses in Spark next to the same answers from DuckDB.

Generates (once, cached under `$LAB_HOME/bench/`) a lake of 1,000,000 orders (about 2.5 million
product lines, 0.5 % of the orders delivered twice) as local Parquet partitioned by `ingest_date`,
exactly as the stream lays it out. Local files rather than S3, so both engines read the same
bytes from the same disk and the figures measure the engines, not the local S3 server.

Then, in one run: the four analyses with the lab's Spark functions (`app.analysis.purchases`,
`local[2]`, tuned as the notebooks run it), the same four answers in DuckDB SQL, the ratio, a check
that both engines agree, and the repeat-purchases write to PostgreSQL with COPY next to
`executemany` (the baseline) when PostgreSQL answers. Target: Spark warm within 2.5 x DuckDB.

Last, `task analyze`'s wall time on that lake: the files are copied to a prefix of the bench's
own in the lab's bucket, and `python -m app.analysis.run` runs both notebooks against it (Spark
session, the lake read from S3, the report files, the table written to PostgreSQL), as a user
runs it; the prefix and the table are removed afterwards (`--no-analyze` skips this).

    .venv/bin/python bench/bench_analysis.py [--orders N] [--rounds N] [--regenerate]
        [--no-analyze]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Run as a script from anywhere: the repository root holds the `app` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.analysis.repeat_store import RepeatRow
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
        part = table.filter(pc.equal(table.column(PARTITION_COLUMN), day)).drop_columns(
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


class Steps:
    """Times each named step of one engine's run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, action: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = action()
        self.seconds[name] = time.perf_counter() - started
        return result

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def duckdb_answers(folder: Path, now: datetime, step: Steps) -> dict[str, Any]:
    """The four answers in DuckDB SQL, with the definitions of `app.analysis.purchases`."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")  # the same two cores Spark gets
    con.execute("SET TimeZone = 'UTC'")
    files = str(folder / "**" / "*.parquet")
    step(
        "read + de-duplicate",
        lambda: con.execute(
            """
            CREATE TEMP TABLE orders AS
            SELECT * FROM read_parquet(?, hive_partitioning = true)
            QUALIFY row_number() OVER (
                PARTITION BY OrderId ORDER BY kafka_timestamp, kafka_partition, kafka_offset) = 1
            """,
            [files],
        ),
    )
    con.execute(
        """
        CREATE TEMP VIEW lines AS
        SELECT OrderId, UserId, TimeStamp, unnest(Products, recursive := true) FROM orders
        """
    )
    best = step(
        "best-selling products",
        lambda: con.execute(
            """
            SELECT ProductId AS product_id, sum(ItemCount) AS units_sold,
                   sum(ItemCount * ItemPrice * (1 - ItemDiscount)) AS revenue
            FROM lines GROUP BY ALL ORDER BY units_sold DESC, product_id LIMIT 10
            """
        ).fetchall(),
    )
    payment = step(
        "payment types",
        lambda: con.execute(
            """
            SELECT PaymentType, count(*) AS orders, count(*) / sum(count(*)) OVER () AS share
            FROM orders GROUP BY ALL ORDER BY orders DESC, PaymentType
            """
        ).fetchall(),
    )
    top = step(
        "top customers, last hour",
        lambda: con.execute(
            """
            SELECT UserId, arg_max(OrderId, (TotalPrice, TimeStamp)), max(TotalPrice) AS best
            FROM orders WHERE TimeStamp > ?::TIMESTAMPTZ - INTERVAL 1 HOUR AND TimeStamp <= ?
            GROUP BY ALL ORDER BY best DESC, UserId LIMIT 10
            """,
            [now, now],
        ).fetchall(),
    )
    repeats = step(
        "repeat purchases (to Python)",
        lambda: con.execute(
            """
            SELECT UserId, ProductId, count(DISTINCT OrderId) AS order_count,
                   sum(ItemCount), min(TimeStamp), max(TimeStamp)
            FROM lines GROUP BY ALL HAVING count(DISTINCT OrderId) > 1
            """
        ).fetchall(),
    )
    return {"best": best, "payment": payment, "top": top, "repeats": repeats}


def spark_answers(spark: Any, folder: Path, now: datetime, step: Steps) -> dict[str, Any]:
    """The four answers with the notebook's functions, collected to Python as the notebook does.

    Spark is lazy: `dedupe_orders` runs only its small job up front; the reading and the rest of
    the de-duplication happen inside each answer's step.
    """
    from app.analysis.purchases import (
        best_selling_products,
        dedupe_orders,
        payment_type_preference,
        read_purchases,
        repeat_purchases,
        repeat_rows,
        top_customers_last_hour,
    )

    orders = step("read + de-duplicate", lambda: dedupe_orders(read_purchases(spark, str(folder))))
    return {
        "best": step("best-selling products", lambda: best_selling_products(orders)),
        "payment": step("payment types", lambda: payment_type_preference(orders)),
        "top": step("top customers, last hour", lambda: top_customers_last_hour(orders, now)),
        "repeats": step(
            "repeat purchases (to Python)", lambda: list(repeat_rows(repeat_purchases(orders)))
        ),
    }


def check_agreement(spark: dict[str, Any], duck: dict[str, Any]) -> None:
    """Fail loudly if the engines disagree: a fast wrong answer is no answer."""
    assert list(spark["best"].product_id) == [row[0] for row in duck["best"]]
    assert list(spark["best"].units_sold) == [row[1] for row in duck["best"]]
    assert list(spark["payment"].orders) == [row[1] for row in duck["payment"]]
    assert list(zip(spark["top"].user_id, spark["top"].order_id, strict=True)) == [
        (row[0], row[1]) for row in duck["top"]
    ]
    assert {row[:4] for row in spark["repeats"]} == {row[:4] for row in duck["repeats"]}


def bench_engines(settings: Settings, folder: Path, rounds: int) -> list[RepeatRow]:
    from app.analysis.purchases import tune_for_analysis
    from app.lake.session import build_spark_session

    print(
        f"\nthe four analyses on {folder.name} (local Parquet): Spark local[2] vs DuckDB 2 threads"
    )
    started = time.perf_counter()
    spark = build_spark_session(settings, "bench-analysis", master="local[2]")
    tune_for_analysis(spark)
    print(f"  Spark session start, not counted: {time.perf_counter() - started:.1f} s")
    print(f"  {'round':<10}{'Spark s':>9}{'DuckDB s':>10}{'ratio':>8}")
    spark_warm: list[Steps] = []
    duck_warm: list[Steps] = []
    for number in range(rounds):
        spark_steps, duck_steps = Steps(), Steps()
        spark_result = spark_answers(spark, folder, NOW, spark_steps)
        check_agreement(spark_result, duckdb_answers(folder, NOW, duck_steps))
        label = "cold (JIT)" if number == 0 else f"warm {number}"
        ratio = spark_steps.total / duck_steps.total
        print(f"  {label:<10}{spark_steps.total:>9.2f}{duck_steps.total:>10.2f}{ratio:>7.1f}x")
        if number:
            spark_warm.append(spark_steps)
            duck_warm.append(duck_steps)
    spark.stop()
    print(f"  answers agree; {len(spark_result['repeats']):,} repeat (customer, product) pairs")
    if spark_warm:
        spark_median = statistics.median(steps.total for steps in spark_warm)
        duck_median = statistics.median(steps.total for steps in duck_warm)
        print(
            f"  median of warm rounds: Spark {spark_median:.2f} s, DuckDB {duck_median:.2f} s, "
            f"ratio {spark_median / duck_median:.1f}x (target <= 2.5x)"
        )
        print(f"  per step, median of warm rounds:  {'Spark s':>8}{'DuckDB s':>10}")
        names = list(dict.fromkeys([*duck_warm[0].seconds, *spark_warm[0].seconds]))
        for name in names:
            spark_step = statistics.median(s.seconds.get(name, 0.0) for s in spark_warm)
            duck_step = statistics.median(s.seconds.get(name, 0.0) for s in duck_warm)
            print(f"    {name:<32}{spark_step:>8.2f}{duck_step:>10.2f}")
    rows: list[RepeatRow] = spark_result["repeats"]
    return rows


def bench_postgres_write(settings: Settings, rows: list[RepeatRow]) -> None:
    """The repeat-purchases write: COPY (what the notebook does) next to executemany."""
    import psycopg2
    from psycopg2 import sql

    from app.analysis.repeat_store import COLUMNS, ensure_schema, replace_repeat_purchases
    from app.core.clients import postgres_connection

    scratch = settings.model_copy(update={"repeat_purchases_table": f"bench_repeat_{os.getpid()}"})
    try:
        conn = postgres_connection(scratch)
    except psycopg2.OperationalError as exc:
        print(f"\nPostgreSQL write skipped: {str(exc).strip()} (run `task infra-up`)")
        return
    table = sql.Identifier(scratch.repeat_purchases_table)
    sample = rows[:20_000]
    try:
        ensure_schema(conn, scratch)
        step = Steps()
        step("COPY", lambda: replace_repeat_purchases(conn, scratch, rows))

        def executemany() -> None:
            insert = sql.SQL("INSERT INTO {} ({}) VALUES (%s, %s, %s, %s, %s, %s)").format(
                table, sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
            )
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DELETE FROM {}").format(table))
                cur.executemany(insert, sample)
            conn.commit()

        step("executemany", executemany)
        print("\nrepeat_purchases write to PostgreSQL, in one transaction each")
        for label, count, seconds in [
            ("COPY (replace_repeat_purchases)", len(rows), step.seconds["COPY"]),
            ("executemany (baseline)", len(sample), step.seconds["executemany"]),
        ]:
            print(f"  {label:<32} {count:>9,} rows {count / seconds:>10,.0f} rows/s")
    finally:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.commit()
        conn.close()


def bench_task_analyze(settings: Settings, folder: Path) -> None:
    """Wall time of `python -m app.analysis.run` on the benchmark's lake, copied to S3."""
    import subprocess
    import tempfile

    from app.core.clients import s3_filesystem
    from tests.support import make_isolated_settings, remove_isolated

    lake = make_isolated_settings(settings)  # its own prefixes and table, removed below
    fs = s3_filesystem(lake)
    output = Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    try:
        started = time.perf_counter()
        # A trailing slash copies the folder's contents (the `ingest_date=` partitions).
        fs.put(
            f"{folder}/", f"{lake.s3_bucket}/{lake.s3_purchases_prefix}".rstrip("/"), recursive=True
        )
        copied = time.perf_counter() - started
        print(f"\ntask analyze on the {folder.name} lake, copied to S3 in {copied:.0f} s:")
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "app.analysis.run", "--output", str(output)],
            env={**os.environ, **lake.as_environment()},
            capture_output=True,
            text=True,
            check=False,
        )
        took = time.perf_counter() - started
        if run.returncode != 0:
            raise SystemExit(f"task analyze failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
        print(f"  python -m app.analysis.run (both notebooks): {took:.1f} s wall")
    finally:
        remove_isolated(lake)
        shutil.rmtree(output, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of both engines (first is cold)"
    )
    parser.add_argument("--regenerate", action="store_true", help="rebuild the cached lake")
    parser.add_argument("--no-analyze", action="store_true", help="skip `task analyze`'s time")
    args = parser.parse_args()
    settings = get_settings()
    folder = lake_folder(settings, args.orders, args.regenerate)
    rows = bench_engines(settings, folder, args.rounds)
    bench_postgres_write(settings, rows)
    if not args.no_analyze:
        bench_task_analyze(settings, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
