"""Every client of the lab's four services, built in one place from the settings.

Kafka's admin client, MongoDB, S3 (s3fs) and PostgreSQL. The context managers close what they
open; code that keeps a client for a process's life (the API's producer, the console's probes)
uses the plain builders and closes it at shutdown. Clients with a job's own configuration (the
API's producer, the drain's consumer) are built next to that job from the same settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import s3fs
from confluent_kafka.admin import AdminClient
from pymongo import MongoClient

from app.core.config import Settings

Document = dict[str, Any]


def kafka_admin(settings: Settings) -> AdminClient:
    """Kafka's admin client (confluent-kafka). Keep it referenced while its futures run: a
    collected client cancels them (`_DESTROY`)."""
    # Critical only: failures reach the caller as exceptions (worded by it), not as a stream of
    # "Connect ... failed" and info lines from librdkafka while a broker is down.
    return AdminClient({"bootstrap.servers": settings.kafka_servers, "log_level": 2})


def mongo_client(settings: Settings, timeout_ms: int = 5000) -> MongoClient[Document]:
    return MongoClient(
        settings.mongo_url,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 6, 30000),
        tz_aware=True,
    )


@contextmanager
def mongo(settings: Settings, timeout_ms: int = 5000) -> Iterator[MongoClient[Document]]:
    """A MongoDB client, closed when the block ends."""
    client = mongo_client(settings, timeout_ms)
    try:
        yield client
    finally:
        client.close()


def s3_filesystem(settings: Settings, *, timeout: float | None = None) -> s3fs.S3FileSystem:
    """An s3fs client; `timeout` (seconds) bounds each request and turns off retries, for the
    calls that must give up quickly while S3 is away (the writer lease)."""
    config: dict[str, object] = {"s3": {"addressing_style": "path"}}
    if timeout is not None:
        config |= {
            "connect_timeout": timeout,
            "read_timeout": timeout,
            "retries": {"max_attempts": 1, "mode": "standard"},
        }
    return s3fs.S3FileSystem(
        key=settings.s3_access_key,
        secret=settings.s3_secret_key,
        endpoint_url=settings.s3_endpoint_url,
        client_kwargs={"region_name": settings.s3_region},
        config_kwargs=config,
        use_listings_cache=False,
    )


def arrow_s3_filesystem(settings: Settings) -> Any:
    """pyarrow's own S3 client, for reading many lake files at once: it fetches them on its I/O
    threads, where s3fs goes one request at a time (3x faster on a lake of small files)."""
    from pyarrow.fs import S3FileSystem

    return S3FileSystem(
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        endpoint_override=settings.s3_endpoint_url,
        region=settings.s3_region,
        connect_timeout=5,  # a down S3 fails the figure, it does not hang it
    )


def postgres_connection(settings: Settings, database: str | None = None) -> Any:
    """A psycopg2 connection to the analytics database (or another on the same server). Use it
    as `with closing(...)` or close it; `with conn:` alone only ends the transaction."""
    return psycopg2.connect(settings.postgres_dsn(database), connect_timeout=5)
