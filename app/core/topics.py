"""Kafka topics of the lab and the admin client that creates them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    ConfigResource,
    NewTopic,
    ResourceType,
)

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


class TopicIds:
    """The id Kafka gave a topic when it was created (a re-created topic has a new one), asked
    anew each time on one admin client: 0.4 ms a question, so a drain can ask after every
    poll whether the records it holds still belong to the topic it started on."""

    def __init__(self, settings: Settings) -> None:
        # The client must outlive its futures: a collected client cancels them (`_DESTROY`).
        self.admin = kafka_admin(settings)

    def of(self, topic: str, timeout: float = 15) -> str:
        future = self.admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
        return str(future[topic].result().topic_id)


def topic_partitions(settings: Settings, topic: str, timeout: float = 15) -> list[int]:
    """The partition numbers of `topic`."""
    admin = kafka_admin(settings)
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
    return [partition.id for partition in future.result().partitions]


# Unread records older than this share of the topic's retention are reported as at risk.
RETENTION_WARNING = 0.9


def lost_offsets_line(topic: str, partition: int, lost: int, reason: str) -> str:
    """The one line that reports offsets the drain never read, in the drain's log, `task
    status` and the console alike."""
    why = {
        "retention": "expired before the drain read them (retention)",
        "data lost": "were lost before the drain read them (the partition's data was lost)",
    }[reason]
    return f"{topic}[{partition}]: {lost:,} offsets {why}"


@dataclass(frozen=True)
class PartitionLag:
    """Where the drain group stands in one partition of `UserEvents`: the log's start and end,
    the group's committed offset (None before its first commit), and how many unread records
    are older than `RETENTION_WARNING` of the topic's retention (next in line to be deleted)."""

    partition: int
    start: int
    end: int
    committed: int | None
    at_risk: int = 0

    @property
    def expired(self) -> int:
        """Offsets the group never read that Kafka has deleted: its commit is below the start."""
        if self.committed is None or self.committed >= self.start:
            return 0
        return self.start - self.committed


@dataclass(frozen=True)
class TopicEnd:
    """A topic's size: records ever written (sum of end offsets) and, for `UserEvents`, what the
    drain group has not committed yet, per partition too. `partitions` is 0 for a topic that
    does not exist; `retention_ms` is None for unlimited retention."""

    topic: str
    partitions: int
    records: int
    drain_lag: int | None = None
    lags: tuple[PartitionLag, ...] = ()
    retention_ms: int | None = None

    def retention_lines(self) -> list[str]:
        """A line per partition whose unread records Kafka deleted or is about to delete."""
        lines = []
        for lag in self.lags:
            if lag.expired:
                lines.append(lost_offsets_line(self.topic, lag.partition, lag.expired, "retention"))
            if lag.at_risk and self.retention_ms is not None:
                lines.append(
                    f"{self.topic}[{lag.partition}]: {lag.at_risk:,} unread records are older "
                    f"than {RETENTION_WARNING:.0%} of the topic's retention "
                    f"({self.retention_ms / 3_600_000:g} h): Kafka deletes them soon; run the "
                    "drain (the DAG, or `task airflow -- dags test`) now"
                )
        return lines


def _retention_ms(settings: Settings, topic: str, timeout: float) -> int | None:
    admin = kafka_admin(settings)  # referenced until the future is done (see TopicIds)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    config = admin.describe_configs([resource], request_timeout=timeout)[resource].result()
    retention = int(config["retention.ms"].value)
    return retention if retention >= 0 else None


def _partition_lags(
    consumer: Consumer, partitions: list[TopicPartition], retention_ms: int | None, timeout: float
) -> tuple[PartitionLag, ...]:
    committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=timeout)}
    old: dict[int, int] = {}
    if retention_ms is not None:
        cutoff = int(time.time() * 1000 - RETENTION_WARNING * retention_ms)
        stamped = [TopicPartition(tp.topic, tp.partition, cutoff) for tp in partitions]
        # The first offset at or after the cutoff: everything before it is older (-1: none is).
        old = {tp.partition: tp.offset for tp in consumer.offsets_for_times(stamped, timeout)}
    lags = []
    for tp in partitions:
        start, end = consumer.get_watermark_offsets(tp, timeout=timeout)
        mark = committed[tp.partition] if committed[tp.partition] >= 0 else None
        position = max(start, mark if mark is not None else start)
        first_young = old.get(tp.partition, start)
        at_risk = max((end if first_young < 0 else first_young) - position, 0)
        lags.append(PartitionLag(tp.partition, start, end, mark, at_risk))
    return tuple(lags)


def topic_ends(settings: Settings, timeout: float = 5) -> list[TopicEnd]:
    """End offsets of the lab's topics, and the drain group's lag on `UserEvents` (per partition
    too, with what retention deleted or is about to delete).

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
            partitions = [TopicPartition(topic, p) for p in sorted(metadata[topic].partitions)]
            if topic != settings.topic_user_events:
                records = sum(
                    consumer.get_watermark_offsets(tp, timeout=timeout)[1] for tp in partitions
                )
                ends.append(TopicEnd(topic, len(partitions), records))
                continue
            retention = _retention_ms(settings, topic, timeout)
            lags = _partition_lags(consumer, partitions, retention, timeout)
            records = sum(lag.end for lag in lags)
            lag = records - sum(lag.committed or 0 for lag in lags)
            ends.append(TopicEnd(topic, len(partitions), records, lag, lags, retention))
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
    admin = kafka_admin(settings)  # referenced until the futures are done (see TopicIds)
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
