"""The four services of the lab, run as local processes (no Docker), in start order (Kafka as
KAFKA_BROKERS nodes)."""

from __future__ import annotations

from app.core.config import Settings
from app.infra.kafka import kafka_nodes
from app.infra.local_service import LocalService
from app.infra.mongo import Mongo
from app.infra.postgres import Postgres
from app.infra.s3 import ObjectStore


def local_services(settings: Settings) -> list[LocalService]:
    return [Postgres(settings), *kafka_nodes(settings), Mongo(settings), ObjectStore(settings)]
