"""Benchmark: the purchases stream (`app.lake.stream`) on `local[2]` against the lab's Kafka and S3.

1. Throughput. A backlog of orders (500,000 by default) is produced into a topic of the
   benchmark's own; then the lab's stream (both file-sink queries, trigger availableNow, the
   settings' maxOffsetsPerTrigger) drains it. orders/s = orders / wall time from start to both
   queries done (the JVM start is reported apart). Baseline, same run, same backlog: Spark
   copying the messages raw (value bytes + lineage to Parquet, one query, no parsing, no
   validation), i.e. what Kafka -> Spark -> S3 costs before the lab adds anything.
2. Freshness at the default trigger (`SPARK_TRIGGER_INTERVAL`, 30 seconds): orders are POSTed
   to the ingest API (`app.api`, run in-process with its real Kafka producer) every second while
   the stream runs; for each order, the time from the start of its POST to the moment its file is
   in the sink's commit log, i.e. readable by Spark or by `committed_files` + pyarrow. The poll
   runs every 0.5 s. Baseline: what the trigger alone implies, about half the interval plus the
   micro-batch duration.
3. S3 requests per micro-batch, from the s3a client's own counters (IOStatistics): the local S3
   server does not report per-request metrics, and every request of the stream goes through
   that one client (local mode, one JVM).

    .venv/bin/python bench/bench_stream.py [--orders N] [--freshness-seconds S] [--rate R]

Topics, S3 prefixes and checkpoints are the benchmark's own and are deleted at the end.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from app.core.config import Settings, get_settings
from app.core.kafka import admin_client, ensure_topics
from app.lake.schema import PARTITION_COLUMN
from app.lake.spark import build_spark_session
from app.lake.storage import ensure_bucket, s3_filesystem
from app.lake.stream import committed_files, kafka_messages, start_queries, stop_queries
from app.schemas import PaymentType, Purchase, PurchasedProduct, order_total

MASTER = "local[2]"
# The s3a counters that are one HTTP request each.
REQUEST_COUNTERS = {
    "object_list_request": "LIST",
    "object_metadata_request": "HEAD",
    "object_put_request": "PUT",
    "object_copy_requests": "COPY",
    "object_delete_request": "DELETE",
    "object_bulk_delete_request": "bulk DELETE",
    "action_http_get_request": "GET",
    "multipart_upload_started": "multipart start",
    "multipart_upload_part_put": "multipart part",
    "multipart_upload_completed": "multipart complete",
}


def bench_settings(base: Settings, name: str) -> Settings:
    tag = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    return base.model_copy(
        update={
            "topic_purchased_item": f"{tag}-PurchasedItem",
            "s3_purchases_prefix": f"{tag}/raw/purchased_items/",
            "s3_quarantine_prefix": f"{tag}/raw/purchased_items_quarantine/",
            "spark_checkpoint_dir": str(base.lab_home / "bench" / "checkpoints" / tag),
        }
    )


def fake_orders(count: int, seed: int, start: datetime) -> Iterator[Purchase]:
    """Valid orders like the generator's: 1-4 lines from 5,000 products, 100,000 users."""
    rng = random.Random(seed)
    payments = list(PaymentType)
    for n in range(count):
        products = [
            PurchasedProduct(
                product_id=f"P{rng.randrange(5000):05d}",
                item_count=rng.randint(1, 3),
                item_price=round(rng.uniform(1, 500), 2),
                item_discount=rng.choice([0.0, 0.0, 0.1, 0.25]),
            )
            for _ in range(rng.randint(1, 4))
        ]
        yield Purchase(
            session_id=f"S{seed}-{n // 3}",
            timestamp=start + timedelta(milliseconds=n),
            user_id=f"U{rng.randrange(100_000):06d}",
            total_price=order_total(products),
            order_id=f"O{seed}-{n:08d}",
            products=products,
            payment_type=rng.choice(payments),
        )


def produce_backlog(settings: Settings, orders: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
        }
    )
    started = time.perf_counter()
    for order in fake_orders(orders, seed=1, start=datetime.now(UTC)):
        while True:
            try:
                producer.produce(
                    settings.topic_purchased_item,
                    value=order.to_json_bytes(),
                    key=order.user_id.encode(),
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120):
        raise SystemExit("Kafka did not take the backlog within 120 s")
    return time.perf_counter() - started


def s3a_counters(spark: SparkSession, settings: Settings) -> dict[str, int]:
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(f"s3a://{settings.s3_bucket}/")
    counters = path.getFileSystem(spark._jsc.hadoopConfiguration()).getIOStatistics().counters()
    return {name: int(counters.get(name) or 0) for name in REQUEST_COUNTERS}


def requests_line(before: dict[str, int], after: dict[str, int], batches: int) -> str:
    delta = {name: after[name] - before[name] for name in REQUEST_COUNTERS}
    total = sum(delta.values())
    parts = ", ".join(
        f"{REQUEST_COUNTERS[name]} {count / batches:.1f}"
        for name, count in sorted(delta.items(), key=lambda item: -item[1])
        if count
    )
    return f"{total / batches:.1f} S3 requests per micro-batch ({parts})"


def batches_of(queries: list[object]) -> int:
    return sum(len(query.recentProgress) for query in queries)  # type: ignore[attr-defined]


def lab_stream(spark: SparkSession, settings: Settings) -> tuple[float, int]:
    started = time.perf_counter()
    queries = start_queries(spark, settings, available_now=True)
    for query in queries:
        query.awaitTermination()
        if query.exception() is not None:
            raise SystemExit(f"query {query.name} failed: {query.exception()}")
    return time.perf_counter() - started, batches_of(queries)


def raw_copy(spark: SparkSession, settings: Settings) -> tuple[float, int]:
    """Baseline: the same messages straight to Parquet, no parsing, no validation, one query."""
    url = f"s3a://{settings.s3_bucket}/{settings.s3_purchases_prefix.rstrip('/')}_raw_copy/"
    started = time.perf_counter()
    query = (
        kafka_messages(spark, settings)
        .select(
            "value",
            "partition",
            "offset",
            "timestamp",
            F.to_date("timestamp").alias(PARTITION_COLUMN),
        )
        .writeStream.format("parquet")
        .partitionBy(PARTITION_COLUMN)
        .option("path", url)
        .option("checkpointLocation", f"{settings.checkpoint_dir}/raw_copy")
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    if query.exception() is not None:
        raise SystemExit(f"raw copy failed: {query.exception()}")
    return time.perf_counter() - started, batches_of([query])


def throughput(spark: SparkSession, base: Settings, orders: int) -> None:
    settings = bench_settings(base, "backlog")
    ensure_topics(settings, [settings.topic_purchased_item])
    took = produce_backlog(settings, orders)
    print(
        f"backlog: {orders:,} orders produced in {took:.1f} s ({orders / took:,.0f}/s) into "
        f"{base.kafka_partitions} partitions; maxOffsetsPerTrigger "
        f"{settings.spark_max_offsets_per_trigger:,}"
    )
    try:
        before = s3a_counters(spark, settings)
        took, batches = lab_stream(spark, settings)
        after = s3a_counters(spark, settings)
        landed = spark.read.parquet(settings.purchases_url).count()
        print(
            f"lab stream (parse + validate, 2 queries):  {orders / took:8,.0f} orders/s "
            f"({took:.1f} s, {batches} micro-batches, {landed:,} rows landed)"
        )
        print(f"  {requests_line(before, after, batches)}")
        before = s3a_counters(spark, settings)
        took, batches = raw_copy(spark, settings)
        after = s3a_counters(spark, settings)
        print(
            f"baseline raw copy (1 query, no parsing):   {orders / took:8,.0f} orders/s "
            f"({took:.1f} s, {batches} micro-batches)"
        )
        print(f"  {requests_line(before, after, batches)}")
        if landed != orders:
            raise SystemExit(f"expected {orders} rows in the lake, found {landed}")
    finally:
        clean_up(settings)


def freshness(spark: SparkSession, base: Settings, seconds: float, rate: int) -> None:
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    settings = bench_settings(base, "fresh")
    ensure_topics(settings, [settings.topic_purchased_item])
    fs = s3_filesystem(settings)
    posted: dict[str, float] = {}
    visible: dict[str, float] = {}
    seen_files: set[str] = set()

    def poll() -> None:
        for key in committed_files(settings, settings.purchases_url):
            if key not in seen_files:
                seen_files.add(key)
                now = time.time()
                ids = pq.read_table(key, columns=["OrderId"], filesystem=fs).column(0)
                for order_id in ids.to_pylist():
                    visible.setdefault(order_id, now)

    orders = fake_orders(int(seconds * rate), seed=2, start=datetime.now(UTC))
    queries = start_queries(spark, settings)
    try:
        before = s3a_counters(spark, settings)
        with TestClient(create_app(settings)) as api:
            started = time.time()
            second = 0
            while second < seconds:
                batch = [next(orders) for _ in range(rate)]
                sent = time.time()
                answer = api.post("/PurchasedItems", json=[order.to_wire() for order in batch])
                answer.raise_for_status()
                posted.update(dict.fromkeys((order.order_id for order in batch), sent))
                second += 1
                while time.time() < started + second:
                    poll()
                    time.sleep(0.5)
        deadline = time.time() + 4 * _interval_seconds(settings) + 60
        while len(visible.keys() & posted.keys()) < len(posted) and time.time() < deadline:
            poll()
            time.sleep(0.5)
        after = s3a_counters(spark, settings)
        batches = batches_of(queries)
        durations = [
            progress["durationMs"]["triggerExecution"] / 1000
            for query in queries
            for progress in query.recentProgress
            if progress["numInputRows"]
        ]
    finally:
        stop_queries(queries)
        clean_up(settings)
    delays = sorted(
        visible[order_id] - posted[order_id] for order_id in posted if order_id in visible
    )
    missing = len(posted) - len(delays)
    interval = _interval_seconds(settings)
    batch_time = statistics.median(durations) if durations else 0.0
    print(
        f"freshness at trigger {settings.spark_trigger_interval!r}: {len(posted):,} orders POSTed "
        f"({rate}/s for {seconds:.0f} s), POST -> readable in the bucket: "
        f"p50 {_quantile(delays, 0.5):.1f} s, p95 {_quantile(delays, 0.95):.1f} s, "
        f"max {delays[-1] if delays else float('nan'):.1f} s"
        + (f"; {missing} never seen" if missing else "")
    )
    print(
        f"  baseline (trigger alone): ~{interval / 2:.0f} s wait + {batch_time:.1f} s median "
        f"micro-batch = ~{interval / 2 + batch_time:.1f} s p50, ~{interval * 0.95 + batch_time:.1f}"
        " s p95"
    )
    print(f"  steady state: {requests_line(before, after, max(batches, 1))}")


def _interval_seconds(settings: Settings) -> float:
    amount, unit = settings.spark_trigger_interval.split()
    return float(amount) * {"second": 1, "seconds": 1, "minute": 60, "minutes": 60}[unit]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def clean_up(settings: Settings) -> None:
    fs = s3_filesystem(settings)
    top = f"{settings.s3_bucket}/{settings.s3_purchases_prefix.split('/')[0]}"
    if fs.exists(top):
        fs.rm(top, recursive=True)
    admin_client(settings).delete_topics([settings.topic_purchased_item])
    shutil.rmtree(settings.checkpoint_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=500_000, help="backlog size")
    parser.add_argument("--freshness-seconds", type=float, default=180.0)
    parser.add_argument("--rate", type=int, default=20, help="orders POSTed per second")
    args = parser.parse_args()
    base = get_settings()
    ensure_bucket(base)
    started = time.perf_counter()
    spark = build_spark_session(base, "bench-stream", kafka=True, master=MASTER)
    took = time.perf_counter() - started
    print(f"Spark {spark.version} on {MASTER}: session (JVM + jars) up in {took:.1f} s")
    try:
        throughput(spark, base, args.orders)
        freshness(spark, base, args.freshness_seconds, args.rate)
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
