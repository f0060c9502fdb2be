"""Offsets the drain never read: deleted by retention before it came, or lost with a partition's
data while the topic (and its id) stayed. Each is reported with its size and place, never
skipped in silence, and every event Kafka still holds is stored and counted once."""

from __future__ import annotations

import logging
import shutil
import time
import uuid

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from app.core.clients import kafka_admin
from app.core.config import Settings
from app.core.topics import TopicIds
from app.pipeline.counts import refresh_event_counts
from app.pipeline.drain import Gap, drain_user_events
from app.status import drain_gaps, topic_offsets
from tests.pipeline.helpers import (
    committed_offsets,
    delete_records_below,
    expected_counts,
    make_events,
    pipeline_settings,
    produce_events,
    produce_to,
    stored_counts,
)
from tests.support import spare_kafka


def test_offsets_deleted_before_the_drain_read_them_are_reported_not_skipped(
    lab_services: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    events = make_events(400, seed=31)
    with pipeline_settings(lab_services, kafka_partitions=1) as settings:
        produce_events(settings, events[:300])
        drain_user_events(settings.model_copy(update={"drain_max_records": 100}))
        delete_records_below(settings, 0, 250)
        produce_events(settings, events[300:])
        topic = settings.topic_user_events
        lost = f"{topic}[0]: 150 offsets expired before the drain read them (retention)"

        assert f"  {lost}" in topic_offsets(settings)  # seen in Kafka before any drain runs
        with caplog.at_level(logging.WARNING, logger="app.pipeline.drain"):
            after = drain_user_events(settings)
        refresh_event_counts(settings)

        assert after.gaps == [Gap(0, 100, 250, 150, "retention")]
        assert after.lost_offsets == 150
        assert f"{lost}: offsets 100 to 249" in caplog.text
        assert (after.consumed, after.stored) == (150, 150)
        assert stored_counts(settings) == expected_counts(events[:100] + events[250:])
        # Kafka no longer shows the gap (the group is past it); the drain's record does.
        assert not any("expired" in line for line in topic_offsets(settings))
        [recorded] = drain_gaps(settings)
        assert recorded.startswith(f"drain: {lost}: offsets 100-249, found ")
        again = drain_user_events(settings)
        assert (again.gaps, again.consumed) == ([], 0)


def test_unread_records_close_to_their_retention_are_announced(lab_services: Settings) -> None:
    days = 24 * 3_600_000
    with pipeline_settings(lab_services, kafka_partitions=1) as settings:
        topic = settings.topic_user_events
        retention = ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry(
                    "retention.ms", str(10 * days), incremental_operation=AlterConfigOpType.SET
                )
            ],
        )
        admin = kafka_admin(settings)
        [future] = admin.incremental_alter_configs([retention]).values()
        future.result(timeout=30)
        events = make_events(100, seed=32)
        # 9.5 days old in a topic that keeps 10: past the 90 % mark, not deleted yet.
        produce_to(settings, 0, events[:60], int(time.time() * 1000) - int(9.5 * days))
        produce_to(settings, 0, events[60:])
        drain_user_events(settings.model_copy(update={"drain_max_records": 20}))

        lines = topic_offsets(settings)

        assert (
            f"  {topic}[0]: 40 unread records are older than 90% of the topic's retention (240 h)"
            ": Kafka deletes them soon; run the drain (the DAG, or `task airflow -- dags test`) now"
        ) in lines
        drain_user_events(settings)
        assert not any("unread records" in line for line in topic_offsets(settings))


def test_a_partition_whose_data_was_lost_under_the_same_topic_id_is_counted_afresh(
    lab_services: Settings,
) -> None:
    """A broker's folder of one partition wiped while it was stopped (a disk replaced, a bad
    restore): Kafka keeps the topic and its id, and the partition starts again at offset 0.
    Partition 0 had been drained to its end (the group's offset is now past the new end);
    partition 1 only in part (its offset is below the new end, but a drain saw it end higher)."""
    events = make_events(620, users=25, seed=33)
    old, new = events[:400], events[400:]
    with (
        spare_kafka(
            lab_services, f"test-back-{uuid.uuid4().hex[:6]}", kafka_partitions=2
        ) as broker,
        pipeline_settings(
            broker.settings, topic_user_events=broker.settings.topic_user_events
        ) as settings,
    ):
        produce_to(settings, 0, old[:200])
        produce_to(settings, 1, old[200:])
        drain_user_events(settings, [0])
        drain_user_events(settings.model_copy(update={"drain_max_records": 50}), [1])
        refresh_event_counts(settings)
        topic = settings.topic_user_events
        topic_id = TopicIds(settings).of(topic)

        broker.stop()
        for partition in (0, 1):
            shutil.rmtree(broker.data_dir / "kraft-logs" / f"{topic}-{partition}")
        broker.start()
        produce_to(settings, 0, new[:110])
        produce_to(settings, 1, new[110:])
        assert TopicIds(settings).of(topic) == topic_id  # the same topic: only its data is new
        after = drain_user_events(settings)
        refresh_event_counts(settings)

        assert (after.went_back, after.resets) == (2, 2)
        # Partition 1's offsets 50-199 were never read, and are gone with the data.
        assert after.gaps == [Gap(1, 50, 200, 150, "data lost")]
        assert (after.consumed, after.stored, after.duplicates) == (220, 220, 0)
        assert stored_counts(settings) == expected_counts(old[:250] + new)
        assert committed_offsets(settings) == {0: 110, 1: 110}
        assert drain_user_events(settings).went_back == 0
