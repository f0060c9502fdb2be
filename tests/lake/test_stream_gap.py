"""Orders past Kafka's retention: the stream refuses to skip them, naming `task lake-ack-gap`
first; acknowledging records exactly what is lost and the stream goes on, keeping the lake."""

from __future__ import annotations

import subprocess
import sys

from confluent_kafka import Consumer, TopicPartition

from app.console.stream_probe import spark_reading
from app.core.clients import kafka_admin
from app.core.config import ROOT, Settings
from app.lake.gaps import gaps_url, recorded_gaps, report
from app.lake.sink_log import committed_files
from tests.lake.helpers import arrow_orders, job_environment, make_orders, produce_orders, run_job


def _end_offsets(settings: Settings) -> dict[int, int]:
    topic = settings.topic_purchased_item
    consumer = Consumer({"bootstrap.servers": settings.kafka_servers, "group.id": "gap-test"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in partitions}
    finally:
        consumer.close()


def _delete_records_before(settings: Settings, ends: dict[int, int]) -> None:
    """Move each partition's log start to `ends`, as retention does."""
    admin = kafka_admin(settings)
    topic = settings.topic_purchased_item
    futures = admin.delete_records([TopicPartition(topic, p, end) for p, end in ends.items()])
    for future in futures.values():
        future.result()


def test_a_gap_past_retention_is_refused_then_acknowledged_keeping_the_lake(
    stream_settings: Settings,
) -> None:
    # The checkpoints in the bucket, as by default, in this test's own scope.
    scope = stream_settings.s3_purchases_prefix.split("/")[0]
    settings = stream_settings.model_copy(
        update={"spark_checkpoint_dir": f"s3a://{stream_settings.s3_bucket}/{scope}/checkpoints"}
    )
    kept, lost, later = make_orders(300, "kept"), make_orders(200, "lost"), make_orders(100, "new")
    produce_orders(settings, kept)
    first = run_job(settings)
    assert first.returncode == 0, first.stderr[-3000:]
    lake_files = set(committed_files(settings, settings.purchases_url))
    written = _end_offsets(settings)

    # 200 orders the stream never read leave Kafka (retention), then new ones arrive.
    produce_orders(settings, lost)
    gone = _end_offsets(settings)
    _delete_records_before(settings, gone)
    produce_orders(settings, later)

    refused = run_job(settings)
    assert refused.returncode == 1
    said = refused.stderr
    assert "Kafka no longer holds orders the stream has not written yet" in said, said[-3000:]
    assert "purchased_items: 200 offsets of" in said
    assert said.index("`task lake-ack-gap`") < said.index("`task lake-reset`")
    assert "Traceback" not in said + refused.stdout
    assert any("NOT ACKNOWLEDGED" in line for line in report(settings))

    ack = subprocess.run(
        [sys.executable, "-m", "app.lake.gaps"],
        env=job_environment(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ack.returncode == 0, ack.stderr
    assert gaps_url(settings) in ack.stdout

    resumed = run_job(settings)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ids = sorted(str(row["OrderId"]) for row in arrow_orders(settings))
    assert ids == sorted(order.order_id for order in kept + later)
    assert lake_files <= set(committed_files(settings, settings.purchases_url))

    # The record says which partitions, which offsets and how many, for each query.
    gaps = {gap["sink"]: gap for gap in recorded_gaps(settings)}
    assert set(gaps) == {"purchased_items", "purchased_items_quarantine"}
    for gap in gaps.values():
        assert gap["lost"] == len(lost)
        assert gap["topic"] == settings.topic_purchased_item
        assert gap["acknowledged_at"] and gap["by"]
        assert {
            part["partition"]: (part["first_lost"], part["last_lost"], part["lost"])
            for part in gap["partitions"]
        } == {
            p: (written[p], gone[p] - 1, gone[p] - written[p]) for p in gone if gone[p] > written[p]
        }
    assert spark_reading(settings).figures["lost_offsets"] == len(lost)
    lines = report(settings)
    assert not any("NOT ACKNOWLEDGED" in line for line in lines)
    assert any(line.startswith("lake gap purchased_items: 200 offsets of") for line in lines)
