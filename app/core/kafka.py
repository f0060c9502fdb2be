"""Kafka topics of the lab and the admin client that creates them."""

from __future__ import annotations

import time

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from app.core.config import Settings


def lab_topics(settings: Settings) -> list[str]:
    return [settings.topic_user_events, settings.topic_purchased_item]


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})


def ensure_topics(settings: Settings, topics: list[str] | None = None) -> list[str]:
    """Create the lab's topics when missing; report each one's partition count."""
    admin = admin_client(settings)
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
    admin = admin_client(settings)
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
    return str(future.result().topic_id)
