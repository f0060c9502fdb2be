"""Fixtures of the API tests: the app with a real producer on isolated topics, and a topic reader.

The app runs in-process (Starlette's TestClient drives its lifespan, so the real confluent-kafka
producer starts and stops with it) against the lab's Kafka, on topics of the test module's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.config import Settings


@pytest.fixture(scope="module")
def api_settings(isolated_settings: Settings) -> Settings:
    """The settings the module's app runs with; modules override this to change limits."""
    return isolated_settings


@pytest.fixture(scope="module")
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def read_topic() -> Callable[[Settings, str], list[Message]]:
    """Every record of a topic, from the beginning up to its end at the time of the call."""

    def read(settings: Settings, topic: str) -> list[Message]:
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "group.id": "api-tests-reader",  # never joined: partitions are assigned
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

    return read
