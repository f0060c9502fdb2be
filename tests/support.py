"""Helpers shared by several test packages."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from app.core.config import Settings
from app.core.kafka import ensure_topics
from app.infra.kafka import Kafka


class SpareKafka(Kafka):
    """A broker of the lab's cached jars with a name of its own (`kafka-spare-<tag>`), so its
    data, log, pid and config files (and its ports, from the settings) are apart from the lab's
    broker and from other spare brokers. Tests stop and start it to cause real outages without
    touching the lab's broker."""

    def __init__(self, settings: Settings, tag: str) -> None:
        self.name = f"kafka-spare-{tag}"  # before the base names its files after it
        super().__init__(settings)

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def spare_kafka(base: Settings, tag: str, **changes: Any) -> Iterator[SpareKafka]:
    """A started spare broker on free ports with topics `<tag>-UserEvents`/`-PurchasedItem`;
    its `settings` point at it. Stopped and wiped afterwards."""
    settings = base.model_copy(
        update={
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
            "kafka_controller_port": free_port(),
            "kafka_heap": "256m",
            "topic_user_events": f"{tag}-UserEvents",
            "topic_purchased_item": f"{tag}-PurchasedItem",
            **changes,
        }
    )
    broker = SpareKafka(settings, tag)
    shutil.rmtree(broker.data_dir, ignore_errors=True)
    broker.start()
    try:
        ensure_topics(settings)
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)


def read_topic(settings: Settings, topic: str) -> list[Message]:
    """Every record of a topic, from the beginning up to its end at the time of the call."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": "tests-reader",  # never joined: partitions are assigned
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        messages: list[Message] = []
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            messages.append(message)
            if message.offset() + 1 >= ends[message.partition()]:
                pending.discard(message.partition())
        assert not pending, f"could not read {topic} to its end within 30 s"
        return messages
    finally:
        consumer.close()
