"""Helpers shared by several test packages."""

from __future__ import annotations

import socket
from pathlib import Path

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
