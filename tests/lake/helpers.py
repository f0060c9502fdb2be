"""Known orders in, lake rows out: what the lake tests produce, read back and compare."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
from confluent_kafka import Producer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from app.core.clients import s3_filesystem
from app.core.config import ROOT, Settings
from app.lake.schema import PURCHASE_STRUCT
from app.lake.sink_log import committed_files
from app.schemas import PaymentType, Purchase, PurchasedProduct, format_timestamp, order_total

ORDER_FIELDS = [field.name for field in PURCHASE_STRUCT.fields]


def make_orders(count: int, tag: str = "t") -> list[Purchase]:
    """`count` valid, distinct orders with 1-3 lines, microsecond times and inexact prices."""
    start = datetime(2026, 11, 27, 10, 15, tzinfo=UTC)
    payments = list(PaymentType)
    orders = []
    for n in range(count):
        products = [
            PurchasedProduct(
                product_id=f"P-{(n * 7 + line) % 97:03d}",
                item_count=1 + (n + line) % 4,
                item_price=round(0.1 + ((n * 31 + line * 17) % 50_000) / 100, 2),
                item_discount=[0.0, 0.15, 0.333][(n + line) % 3],
            )
            for line in range(1 + n % 3)
        ]
        orders.append(
            Purchase(
                session_id=f"S-{tag}-{n // 2}",
                timestamp=start + timedelta(seconds=n, microseconds=n % 1_000_000),
                user_id=f"U-{n % 113}",
                total_price=order_total(products),
                order_id=f"O-{tag}-{n:07d}",
                products=products,
                payment_type=payments[n % len(payments)],
            )
        )
    return orders


def produce(settings: Settings, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    """Send (key, value) messages to the settings' purchases topic; fail on any delivery error."""
    producer = Producer(
        {"bootstrap.servers": settings.kafka_servers, "linger.ms": 20, "acks": "all"}
    )
    errors: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(str(error))

    for key, value in messages:
        producer.produce(settings.topic_purchased_item, value=value, key=key, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages still queued after 30 s"
    assert not errors, errors[:3]


def produce_orders(settings: Settings, orders: list[Purchase]) -> None:
    produce(settings, [(order.user_id.encode(), order.to_json_bytes()) for order in orders])


def spark_orders(frame: DataFrame) -> list[dict[str, Any]]:
    """Lake rows as the wire dicts of `Purchase.to_wire()` (TimeStamp formatted in UTC)."""
    stamped = frame.withColumn(
        "TimeStamp", F.date_format("TimeStamp", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'")
    )
    return [row.asDict(recursive=True) for row in stamped.select(*ORDER_FIELDS).collect()]


def arrow_rows(settings: Settings, url: str) -> list[dict[str, Any]]:
    """The committed rows of a sink read with pyarrow + s3fs (no Spark)."""
    files = committed_files(settings, url)
    if not files:
        return []
    dataset = ds.dataset(
        files,
        filesystem=s3_filesystem(settings),
        format="parquet",
        partitioning="hive",
        partition_base_dir=url.removeprefix("s3a://").rstrip("/"),
    )
    return list(dataset.to_table().to_pylist())


def arrow_orders(settings: Settings) -> list[dict[str, Any]]:
    rows = arrow_rows(settings, settings.purchases_url)
    for row in rows:
        row["TimeStamp"] = format_timestamp(row["TimeStamp"])
    return [{name: row[name] for name in ORDER_FIELDS} for row in rows]


def folder_order_ids(settings: Settings) -> list[str]:
    """OrderIds of every Parquet file in the purchases folder, read as a plain reader would
    (pyarrow lists the folder; it skips `_spark_metadata` but knows nothing of its commits)."""
    folder = settings.purchases_url.removeprefix("s3a://").rstrip("/")
    dataset = ds.dataset(
        folder, filesystem=s3_filesystem(settings), format="parquet", partitioning="hive"
    )
    return [str(value) for value in dataset.to_table(columns=["OrderId"]).column("OrderId")]


def wait_for(
    check: Callable[[], bool], what: str, timeout: float = 120.0, every: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def job_environment(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.as_environment()}


def start_job(settings: Settings, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    """The stream job (`python -m app.lake`) in its own process group, as honcho runs it."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.lake", "--master", "local[2]", *flags],
            cwd=ROOT,
            env=job_environment(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_job(
    settings: Settings, *flags: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The stream job to its end (`--available-now`), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "app.lake", "--master", "local[2]", "--available-now", *flags],
        cwd=ROOT,
        env=job_environment(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
