"""Create what the lab's code expects on the running services (idempotent, both modes)."""

from __future__ import annotations

from psycopg2 import sql

from app.analysis.repeat_store import ensure_schema
from app.core.clients import postgres_connection
from app.core.config import Settings
from app.core.topics import ensure_topics
from app.lake.storage import ensure_bucket
from app.pipeline.store import EventStore


def ensure_databases(settings: Settings) -> list[str]:
    conn = postgres_connection(settings, "postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    lines = []
    try:
        with conn.cursor() as cur:
            for name in (settings.postgres_database, settings.postgres_airflow_database):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    lines.append(f"postgres database {name}: created")
                else:
                    lines.append(f"postgres database {name}: exists")
    finally:
        conn.close()
    return lines


def bootstrap(settings: Settings) -> list[str]:
    lines = ensure_topics(settings)
    if settings.kafka_replication_warning:
        lines.append(f"warning: {settings.kafka_replication_warning}")
    lines.append(ensure_bucket(settings))
    with EventStore.open(settings) as store:
        lines += store.ensure_indexes()
    lines += ensure_databases(settings)
    conn = postgres_connection(settings)
    try:
        lines.append(ensure_schema(conn, settings))
    finally:
        conn.close()
    return lines
