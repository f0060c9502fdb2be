"""The purchases stream in-process against real Kafka and S3: every order lands once, poison is
kept aside with its reason, and the stream carries on."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from app.core.config import Settings
from app.lake.queries import start_queries, stop_queries
from tests.lake.helpers import (
    arrow_orders,
    arrow_rows,
    make_orders,
    produce,
    produce_orders,
    spark_orders,
    wait_for,
)


def _run_available_now(spark: SparkSession, settings: Settings) -> None:
    for query in start_queries(spark, settings, available_now=True):
        query.awaitTermination(600)
        assert query.exception() is None, query.exception()


def _by_order_id(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(rows, key=lambda row: str(row["OrderId"]))


def test_available_now_lands_every_order_once_field_for_field(
    spark: SparkSession, stream_settings: Settings
) -> None:
    settings = stream_settings
    started = datetime.now(UTC).date()
    first, second = make_orders(1200, "a"), make_orders(300, "b")
    produce_orders(settings, first)
    # 1200 orders over 3 partitions at 500 offsets per trigger: several micro-batches.
    _run_available_now(spark, settings)

    lake = spark.read.parquet(settings.purchases_url)
    assert lake.count() == len(first)
    expected = _by_order_id([order.to_wire() for order in first])
    assert _by_order_id(spark_orders(lake)) == expected
    assert _by_order_id(arrow_orders(settings)) == expected

    lineage = lake.select("kafka_partition", "kafka_offset", "kafka_timestamp", "ingest_date")
    assert lineage.select("kafka_partition", "kafka_offset").distinct().count() == len(first)
    assert lineage.where(F.col("ingest_date") != F.to_date("kafka_timestamp")).count() == 0
    # The UTC dates of the run (the partition is the UTC date of the Kafka time).
    assert {row["ingest_date"] for row in lineage.collect()} <= {started, datetime.now(UTC).date()}
    assert arrow_rows(settings, settings.purchases_quarantine_url) == []

    # A second run resumes from the checkpoint: only the new orders are added.
    produce_orders(settings, second)
    _run_available_now(spark, settings)
    both = _by_order_id([order.to_wire() for order in first + second])
    assert _by_order_id(spark_orders(spark.read.parquet(settings.purchases_url))) == both


def test_poison_is_quarantined_with_its_reason_and_the_stream_goes_on(
    spark: SparkSession, stream_settings: Settings
) -> None:
    settings = stream_settings
    before, after = make_orders(40, "before"), make_orders(40, "after")
    no_user = before[0].to_wire()
    del no_user["UserId"]
    poison: list[tuple[bytes | None, bytes | None]] = [
        (b"k1", b"{not json"),
        (b"k2", json.dumps(no_user).encode()),
        (b"k3", None),
    ]
    queries = start_queries(spark, settings)
    try:
        produce_orders(settings, before)
        produce(settings, poison)
        wait_for(
            lambda: len(arrow_rows(settings, settings.purchases_quarantine_url)) == 3,
            "the three poison messages in quarantine",
        )
        produce_orders(settings, after)
        wait_for(
            lambda: len(arrow_orders(settings)) == len(before) + len(after),
            "the orders sent after the poison",
        )
        assert all(query.isActive and query.exception() is None for query in queries)
    finally:
        stop_queries(queries)

    quarantine = {
        row["raw_value"]: row["error"]
        for row in spark.read.parquet(settings.purchases_quarantine_url).collect()
    }
    assert quarantine == {
        "{not json": "not a JSON object",
        json.dumps(no_user): "UserId is missing or null",
        None: "empty message value (tombstone)",
    }
    lake = spark_orders(spark.read.parquet(settings.purchases_url))
    assert _by_order_id(lake) == _by_order_id([order.to_wire() for order in before + after])
