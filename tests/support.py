"""Helpers shared by several test packages."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.core.kafka import ensure_topics
from app.infra.kafka import Kafka


class SpareKafka(Kafka):
    """A broker of the lab's cached jars with its own name, so its data, log, pid and config
    files (and its ports, from the settings) are separate from the lab's broker. Tests stop and
    start it to cause real outages without touching the lab's broker."""

    name = "kafka-spare-test"

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
    broker = SpareKafka(settings)
    shutil.rmtree(broker.data_dir, ignore_errors=True)
    broker.start()
    try:
        ensure_topics(settings)
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)
