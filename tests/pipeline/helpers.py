"""Known events in, stored documents and counts out: what the pipeline tests send and compare."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, Producer, TopicPartition

from app.core.clients import kafka_admin
from app.core.config import ROOT, Settings
from app.core.topics import ensure_topics
from app.schemas import EventAttributes, EventName, UserEvent
from tests.support import event_store, make_isolated_settings, remove_isolated

Pair = tuple[str, str]


def make_events(count: int, users: int = 40, seed: int = 7) -> list[UserEvent]:
    """`count` valid events spread over `users` users and the three event names."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 27, 10, 15, tzinfo=UTC)
    names = list(EventName)
    return [
        UserEvent(
            user_id=f"user-{rng.randrange(users)}",
            session_id=f"session-{n // 5}",
            event_name=rng.choice(names),
            timestamp=start + timedelta(microseconds=1234 * n),
            attributes=EventAttributes(
                product_id=f"product-{rng.randrange(50)}",
                price=round(rng.uniform(1, 500), 2),
                discount=rng.choice([0.0, 0.1, 0.25]),
            ),
        )
        for n in range(count)
    ]


def expected_counts(events: Iterable[UserEvent]) -> dict[Pair, int]:
    return dict(Counter((event.user_id, event.event_name.value) for event in events))


def produce(settings: Settings, values: Iterable[bytes | None]) -> None:
    """Send raw values to the settings' UserEvents topic and wait until Kafka has them all."""
    producer = Producer({"bootstrap.servers": settings.kafka_servers, "linger.ms": 20})
    for value in values:
        producer.produce(settings.topic_user_events, value)
        producer.poll(0)
    assert producer.flush(30) == 0, "Kafka did not acknowledge every test message"


def produce_events(settings: Settings, events: Iterable[UserEvent]) -> None:
    produce(settings, (event.to_json_bytes() for event in events))


def produce_to(
    settings: Settings, partition: int, events: list[UserEvent], timestamp_ms: int = 0
) -> None:
    """Send `events` to one partition (with a record time of `timestamp_ms` when given)."""
    producer = Producer({"bootstrap.servers": settings.kafka_servers, "linger.ms": 20})
    for event in events:
        producer.produce(
            settings.topic_user_events,
            event.to_json_bytes(),
            partition=partition,
            timestamp=timestamp_ms,
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "Kafka did not acknowledge every test message"


def delete_records_below(settings: Settings, partition: int, offset: int) -> None:
    """Move the partition's log start to `offset`, as retention does when it deletes a segment."""
    tp = TopicPartition(settings.topic_user_events, partition, offset)
    admin = kafka_admin(settings)  # referenced until the future is done: it would cancel it
    [future] = admin.delete_records([tp]).values()
    assert future.result(timeout=30).low_watermark == offset


def stored_counts(settings: Settings) -> dict[Pair, int]:
    store = event_store(settings)
    return {(d["UserId"], d["EventName"]): d["EventCount"] for d in store.counts.find()}


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The drain group's committed offset of each partition that has one."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_servers, "group.id": settings.drain_group_id}
    )
    try:
        partitions = [
            TopicPartition(settings.topic_user_events, p) for p in range(settings.kafka_partitions)
        ]
        committed = consumer.committed(partitions, timeout=15)
        return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
    finally:
        consumer.close()


def commit_offsets(settings: Settings, offsets: dict[int, int]) -> None:
    """Commit `offsets` (partition -> offset) for the drain's group, as a group member would."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_servers, "group.id": settings.drain_group_id}
    )
    try:
        consumer.commit(
            offsets=[
                TopicPartition(settings.topic_user_events, partition, offset)
                for partition, offset in offsets.items()
            ],
            asynchronous=False,
        )
    finally:
        consumer.close()


@contextmanager
def pipeline_settings(base: Settings, **changes: object) -> Iterator[Settings]:
    """Settings with a topic, Mongo database and consumer group of their own (plus `changes`),
    bootstrapped for the pipeline; all of them are removed afterwards."""
    settings = make_isolated_settings(base).model_copy(update=changes)
    ensure_topics(settings, [settings.topic_user_events])
    event_store(settings).ensure_indexes()
    try:
        yield settings
    finally:
        remove_isolated(settings)


def run_child(settings: Settings, setup: str, call: str) -> subprocess.CompletedProcess[str]:
    """Run `call` in a fresh Python process whose settings are `settings`, after `setup` (which
    patches in a crash: `os._exit(3)` dies like a killed worker, no cleanup, no commit)."""
    code = "\n".join(
        [
            "import os",
            setup,
            "from app.core.config import get_settings",
            "from app.pipeline.drain import drain_user_events",
            "from app.pipeline.counts import refresh_event_counts",
            call,
        ]
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **settings.as_environment(), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
