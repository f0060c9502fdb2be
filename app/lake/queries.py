"""The two file-sink queries of the purchases stream: Kafka topic -> valid orders | quarantine.

Both read the same topic, each with its own checkpoint: one writes the valid orders to
`purchases_url`, the other the messages that are not valid orders to `purchases_quarantine_url`,
both partitioned by the ingestion date. Each query is exactly-once on its own: the offsets of a
micro-batch are logged in the checkpoint before it runs, and the batch becomes visible only when
its file list is committed to the sink's `_spark_metadata` log (see `app.lake.sink_log`). One
query with `foreachBatch` writing both paths would lose that: its writes are not tied to the
commit, so a re-run duplicates them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming.query import StreamingQuery

from app.core.config import Settings
from app.lake.parse import parse_purchases, quarantined_purchases, valid_purchases
from app.lake.schema import PARTITION_COLUMN
from app.lake.storage import join_url


@dataclass(frozen=True)
class Sink:
    name: str
    url: str
    checkpoint: str
    rows: Callable[[DataFrame], DataFrame]


def sinks(settings: Settings) -> list[Sink]:
    """The stream's two sinks, each with its checkpoint under `settings.checkpoint_dir`."""
    checkpoints = settings.checkpoint_dir
    return [
        Sink(
            "purchased_items",
            settings.purchases_url,
            join_url(checkpoints, "purchased_items"),
            valid_purchases,
        ),
        Sink(
            "purchased_items_quarantine",
            settings.purchases_quarantine_url,
            join_url(checkpoints, "purchased_items_quarantine"),
            quarantined_purchases,
        ),
    ]


def kafka_messages(spark: SparkSession, settings: Settings) -> DataFrame:
    # Spark 4.1.1's Kafka source (DSv2) fails the first micro-batch after a restart that re-runs
    # an unfinished batch: an NPE in KafkaMicroBatchStream.metrics (SPARK-55271), i.e. after every
    # crash or stop mid-batch. The V1 source reads the same offsets and the same checkpoint
    # format without that bug.
    spark.conf.set(
        "spark.sql.streaming.disabledV2MicroBatchReaders",
        "org.apache.spark.sql.kafka010.KafkaSourceProvider",
    )
    timeout_ms = str(int(settings.spark_kafka_timeout_seconds * 1000))
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_servers)
        .option("subscribe", settings.topic_purchased_item)
        # A new checkpoint starts from the oldest order Kafka still holds, never "from now".
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", settings.spark_max_offsets_per_trigger)
        # Offsets the checkpoint expects but Kafka no longer has (retention, a re-created
        # topic) are lost orders: stop and say so instead of skipping them.
        .option("failOnDataLoss", "true")
        # Bounds each wait for Kafka, so an outage fails the query (which the stream restarts
        # once Kafka is back) rather than hanging it in a call to a broker that is gone.
        .option("kafka.default.api.timeout.ms", timeout_ms)
        .option("kafka.request.timeout.ms", timeout_ms)
        .load()
    )


def start_queries(
    spark: SparkSession, settings: Settings, *, available_now: bool = False
) -> list[StreamingQuery]:
    """Start both file-sink queries; `available_now` processes the backlog, then they end."""
    parsed = parse_purchases(kafka_messages(spark, settings))
    queries = []
    for sink in sinks(settings):
        writer = (
            sink.rows(parsed)
            .writeStream.format("parquet")
            .queryName(f"{sink.name} <- {settings.topic_purchased_item}")
            .outputMode("append")
            .partitionBy(PARTITION_COLUMN)
            .option("path", sink.url)
            .option("checkpointLocation", sink.checkpoint)
        )
        if available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=settings.spark_trigger_interval)
        queries.append(writer.start())
    return queries


def stop_queries(queries: list[StreamingQuery], patience: int | None = None) -> None:
    """Stop now, even mid-batch: a batch cut short is in no commit and is re-run from its
    logged offsets on the next start. Both at once: each stop waits for its batch's tasks to
    die, and with `patience` (seconds; only when the process exits next, since the batch goes
    on in the background) at most that long."""
    if not queries:
        return
    if patience is not None:
        SparkSession.active().conf.set("spark.sql.streaming.stopTimeout", f"{patience}s")
    with ThreadPoolExecutor(len(queries)) as pool:
        list(pool.map(_stop, queries))


def _stop(query: StreamingQuery) -> None:
    try:
        query.stop()
    except Exception as exc:
        # The batch in flight was busy past the patience (a write to S3 is not
        # interruptible); it ends with the process, cut short like a crash, and is re-run.
        if "failed to stop within" not in str(exc):
            raise
