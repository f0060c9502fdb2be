"""Kafka topics of the lab and the admin client that creates them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from app.core.clients import kafka_admin
from app.core.config import Settings


def lab_topics(settings: Settings) -> list[str]:
    return [settings.topic_user_events, settings.topic_purchased_item]


def ensure_topics(settings: Settings, topics: list[str] | None = None) -> list[str]:
    """Create the lab's topics when missing; report each one's partition count."""
    admin = kafka_admin(settings)
    wanted = topics or lab_topics(settings)
    existing = admin.list_topics(timeout=15).topics
    missing = [name for name in wanted if name not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=settings.kafka_partitions,
                    replication_factor=settings.kafka_replication_factor,
                )
                for name in missing
            ],
            operation_timeout=30,
        )
        for future in futures.values():
            try:
                future.result()
            except KafkaException as exc:
                # Created meanwhile by someone else: that is what we wanted.
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    # Metadata can lag a fresh CreateTopics by a moment; wait until every topic is listed.
    deadline = time.monotonic() + 30
    metadata = admin.list_topics(timeout=15).topics
    while any(name not in metadata for name in wanted) and time.monotonic() < deadline:
        time.sleep(0.2)
        metadata = admin.list_topics(timeout=15).topics
    return [
        f"topic {name}: {len(metadata[name].partitions)} partitions"
        + (" (created)" if name in missing else "")
        for name in wanted
    ]


def topic_id(settings: Settings, topic: str, timeout: float = 15) -> str:
    """The id Kafka gave `topic` when it was created: a re-created topic has a new one."""
    # The client must outlive the future: a collected client cancels it (`_DESTROY`).
    admin = kafka_admin(settings)
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
    return str(future.result().topic_id)


def topic_partitions(settings: Settings, topic: str, timeout: float = 15) -> list[int]:
    """The partition numbers of `topic`."""
    admin = kafka_admin(settings)
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
    return [partition.id for partition in future.result().partitions]


@dataclass(frozen=True)
class TopicEnd:
    """A topic's size: records ever written (sum of end offsets) and, for `UserEvents`, what the
    drain group has not committed yet. `partitions` is 0 for a topic that does not exist."""

    topic: str
    partitions: int
    records: int
    drain_lag: int | None = None


def topic_ends(settings: Settings, timeout: float = 5) -> list[TopicEnd]:
    """End offsets of the lab's topics and the drain group's lag on `UserEvents`.

    A broker that is down raises (KafkaException) instead of logging a line per retry: the
    callers (`task status`, the console every 2 s) say so once in their own words.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.drain_group_id,  # read, never joined: its commits stay as they are
            "enable.auto.commit": False,
            "log_level": 2,  # critical only: no "Connect ... failed" lines
        }
    )
    ends = []
    try:
        metadata = consumer.list_topics(timeout=timeout).topics
        for topic in lab_topics(settings):
            if topic not in metadata:
                ends.append(TopicEnd(topic, 0, 0))
                continue
            partitions = [TopicPartition(topic, p) for p in metadata[topic].partitions]
            records = sum(
                consumer.get_watermark_offsets(tp, timeout=timeout)[1] for tp in partitions
            )
            lag = None
            if topic == settings.topic_user_events:
                committed = consumer.committed(partitions, timeout=timeout)
                lag = records - sum(max(tp.offset, 0) for tp in committed)
            ends.append(TopicEnd(topic, len(partitions), records, lag))
    finally:
        consumer.close()
    return ends
