"""`task status`'s lake figures: the orders of a lake of many small files (same answers, read per
column), and the records the stream has not read that Kafka's retention deletes soon."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from pyspark.sql.pandas.types import to_arrow_schema

from app.console.lake_probe import stream_retention_reading
from app.core.clients import kafka_admin, s3_filesystem
from app.core.config import Settings
from app.core.topics import ensure_topics
from app.lake.gaps import retention_warnings
from app.lake.queries import sinks
from app.lake.schema import PURCHASE_ROW
from app.lake.storage import location
from app.status import lake_orders, stream_retention
from tests.analysis.dataset import retried_rows

HOUR_MS = 3_600_000


@pytest.fixture
def lake_settings(isolated_settings: Settings) -> Iterator[Settings]:
    yield isolated_settings
    fs = s3_filesystem(isolated_settings)
    fs.rm(f"{isolated_settings.s3_bucket}/{isolated_settings.s3_purchases_prefix}", recursive=True)


def _commit_each_row(settings: Settings, rows: list[dict[str, object]]) -> None:
    """Commit every row as a micro-batch of its own (one file each), as a 1 s trigger does."""
    fs = s3_filesystem(settings)
    root = f"{settings.s3_bucket}/{settings.s3_purchases_prefix}".rstrip("/")
    schema = to_arrow_schema(PURCHASE_ROW).remove(PURCHASE_ROW.fieldNames().index("ingest_date"))
    for batch, row in enumerate(rows):
        path = f"{root}/ingest_date=2026-01-01/part-{batch:05d}.parquet"
        with fs.open(path, "wb") as handle:
            pq.write_table(pa.Table.from_pylist([row], schema=schema), handle)
        entry = {"path": f"s3a://{path}", "size": fs.size(path), "isDir": False, "action": "add"}
        fs.pipe_file(f"{root}/_spark_metadata/{batch}", f"v1\n{json.dumps(entry)}\n".encode())


def test_conflicts_across_many_small_files_are_found_as_in_one_read(
    lake_settings: Settings,
) -> None:
    """Re-deliveries and a conflicting version of one order land in files of their own: the
    column-by-column read finds the same conflict, counted version and figures."""
    rows = retried_rows()
    _commit_each_row(lake_settings, rows)

    head, conflict = lake_orders(lake_settings)

    assert head == f"lake orders: {len(rows)} rows, {len({r['OrderId'] for r in rows})} OrderIds"
    assert conflict.startswith("lake orders: CONFLICT: 1 OrderIds arrived with different content")
    assert conflict.endswith("O-alice-1 (2 versions; counted: partition 0 offset 501)")


def _set_retention(settings: Settings, **limits: int) -> None:
    resource = ConfigResource(
        ResourceType.TOPIC,
        settings.topic_purchased_item,
        incremental_configs=[
            ConfigEntry(
                name.replace("_", "."), str(value), incremental_operation=AlterConfigOpType.SET
            )
            for name, value in limits.items()
        ],
    )
    admin = kafka_admin(settings)  # referenced until the future is done
    [future] = admin.incremental_alter_configs([resource]).values()
    future.result(timeout=30)


def _produce(settings: Settings, count: int, age_ms: int = 0, size: int = 100) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_servers, "linger.ms": 20})
    stamp = int(time.time() * 1000) - age_ms
    for _ in range(count):
        producer.produce(settings.topic_purchased_item, b"x" * size, partition=0, timestamp=stamp)
    assert producer.flush(30) == 0


def _stream_read_up_to(settings: Settings, batch: int, offset: int) -> None:
    """Both queries' checkpoints, as Spark leaves them once batch `batch` (which read the
    topic's partition 0 up to `offset`) is committed."""
    ends = {settings.topic_purchased_item: {"0": offset, "1": 0, "2": 0}}
    for sink in sinks(settings):
        _, folder = location(settings, sink.checkpoint)
        for log, body in (
            ("offsets", f'{{"batchWatermarkMs":0}}\n{json.dumps(ends)}'),
            ("commits", "{}"),
        ):
            Path(folder, log).mkdir(parents=True, exist_ok=True)
            Path(folder, log, str(batch)).write_text(f"v1\n{body}\n")


@pytest.fixture
def stream_settings(isolated_settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A purchases topic and checkpoints of the test's own (each test sets its retention)."""
    topic = f"{isolated_settings.topic_purchased_item}-{uuid.uuid4().hex[:6]}"
    settings = isolated_settings.model_copy(
        update={"topic_purchased_item": topic, "spark_checkpoint_dir": str(tmp_path)}
    )
    ensure_topics(settings, [topic])
    yield settings
    admin = kafka_admin(settings)
    [future] = admin.delete_topics([topic]).values()
    future.result(timeout=30)


def test_unread_orders_close_to_their_retention_are_announced(stream_settings: Settings) -> None:
    settings = stream_settings
    _set_retention(settings, retention_ms=HOUR_MS)
    _produce(settings, 6, age_ms=58 * 60_000)  # past 90 % of the hour, not deleted yet
    _produce(settings, 4)
    _stream_read_up_to(settings, 0, 2)

    [line] = retention_warnings(settings)

    topic = settings.topic_purchased_item
    assert line == (
        f"{topic}[0]: the oldest record the stream has not read (purchased_items, "
        "purchased_items_quarantine) is 1.0 h old; 4 unread records are older than 90% of the "
        "topic's retention.ms (1.0 h). Kafka deletes them soon, and the stream would then stop "
        "at a gap (`task lake-ack-gap`): start the stream now (`task up`)"
    )
    assert stream_retention(settings) == [f"stream: {line}"]
    assert stream_retention_reading(settings).figures == {"stream_retention": [line]}
    _stream_read_up_to(settings, 1, 6)  # the stream read the old ones
    assert retention_warnings(settings) == []


def test_unread_bytes_near_the_size_retention_are_announced(stream_settings: Settings) -> None:
    settings = stream_settings
    _set_retention(settings, retention_ms=-1, retention_bytes=10_000)
    _produce(settings, 100)  # 10,000 bytes of values, none read yet
    _stream_read_up_to(settings, 0, 0)

    [line] = retention_warnings(settings)

    assert "; about 9.8 KiB unread, over 90% of its retention.bytes (9.8 KiB a partition)." in line
    _stream_read_up_to(settings, 1, 50)
    assert retention_warnings(settings) == []
