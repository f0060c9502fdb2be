"""Kafka topics of the lab and the admin client that creates them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from app.core.clients import kafka_admin
from app.core.config import Settings
from app.core.errors import LabError


def lab_topics(settings: Settings) -> list[str]:
    return [settings.topic_user_events, settings.topic_purchased_item]


class KafkaClusterTooSmall(LabError):
    """The topics' replication factor asks for more brokers than the cluster has."""


def ensure_topics(settings: Settings, topics: list[str] | None = None) -> list[str]:
    """Create the lab's topics when missing (replicated as the settings say); report each
    one's partition count."""
    admin = kafka_admin(settings)
    wanted = topics or lab_topics(settings)
    cluster = admin.list_topics(timeout=15)
    missing = [name for name in wanted if name not in cluster.topics]
    if missing and len(cluster.brokers) < settings.kafka_replicas:
        raise KafkaClusterTooSmall(
            f"Kafka at {settings.kafka_servers} has {len(cluster.brokers)} broker(s) up, fewer "
            f"than the replication factor {settings.kafka_replicas} of the topics to create "
            f"({', '.join(missing)}). Start every node (`KAFKA_BROKERS={settings.kafka_brokers} "
            f"task infra-up`; `task infra-status` lists them) or lower KAFKA_REPLICATION_FACTOR."
        )
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=settings.kafka_partitions,
                    replication_factor=settings.kafka_replicas,
                    config={"min.insync.replicas": str(settings.kafka_min_insync_replicas)},
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
            "bootstrap.servers": settings.kafka_servers,
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


@dataclass(frozen=True)
class PartitionReplicas:
    """Where one partition lives: its leader (None while it has none), its replicas and the
    replicas in sync with the leader."""

    topic: str
    partition: int
    leader: int | None
    replicas: list[int]
    in_sync: list[int]

    @property
    def under_replicated(self) -> bool:
        return len(self.in_sync) < len(self.replicas)


def partition_replicas(settings: Settings, timeout: float = 5) -> list[PartitionReplicas]:
    """Replicas and in-sync replicas of each partition of the lab's existing topics."""
    admin = kafka_admin(settings)  # referenced until the futures are done (see topic_id)
    existing = set(admin.list_topics(timeout=timeout).topics)
    topics = [topic for topic in lab_topics(settings) if topic in existing]
    if not topics:
        return []
    futures = admin.describe_topics(TopicCollection(topics), request_timeout=timeout)
    rows = []
    for topic in topics:
        for info in futures[topic].result().partitions:
            rows.append(
                PartitionReplicas(
                    topic,
                    info.id,
                    info.leader.id if info.leader is not None else None,
                    [node.id for node in info.replicas],
                    [node.id for node in info.isr],
                )
            )
    return rows
