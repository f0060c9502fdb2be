"""Shared fixtures: the real services, started once per test session, and isolated names.

Tests talk to real Kafka, MongoDB, S3 and PostgreSQL over real connections. `lab_services`
runs `infra-up` once (idempotent: services already up are reused, so the suite can run beside
a running lab). Each test module gets its own topics, Mongo database, S3 prefix and Postgres
table through `isolated_settings`, so tests never see each other's data or the lab's; the
fixture removes them again (`remove_isolated`), so repeated runs leave the services as they were.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from app.core.config import Settings, get_settings

# A test whose fixtures include one of these needs the services or starts a Spark JVM.
HEAVY_FIXTURES = {"lab_services", "spark"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need no service and no Spark: `pytest -m quick` runs them in seconds."""
    for item in items:
        if not HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.quick)


@pytest.fixture(scope="session")
def lab_services() -> Settings:
    """The four services, up and bootstrapped (started here if they are not running)."""
    from app.infra.cli import up

    settings = get_settings()
    up(settings)
    return settings


def make_isolated_settings(base: Settings, tag: str | None = None) -> Settings:
    """Settings whose topics, database, prefixes and table belong to one test scope only."""
    tag = tag or uuid.uuid4().hex[:10]
    return base.model_copy(
        update={
            "topic_user_events": f"test-{tag}-UserEvents",
            "topic_purchased_item": f"test-{tag}-PurchasedItem",
            "mongo_database": f"test_{tag}",
            "s3_purchases_prefix": f"test-{tag}/raw/purchased_items/",
            "s3_quarantine_prefix": f"test-{tag}/raw/purchased_items_quarantine/",
            "repeat_purchases_table": f"repeat_purchases_test_{tag}",
            # Airflow's metadata of a test (`airflow dags test`, a lab under honcho) stays apart
            # from the lab's own DAG runs.
            "postgres_airflow_database": f"airflow_test_{tag}",
            "drain_group_id": f"test-{tag}-drain",
            "spark_checkpoint_dir": str(base.lab_home / "test-checkpoints" / tag),
        }
    )


@pytest.fixture(scope="module")
def isolated_settings(lab_services: Settings) -> Iterator[Settings]:
    """Per-module names on the shared services; topics and buckets bootstrapped."""
    from app.infra.bootstrap import bootstrap

    settings = make_isolated_settings(lab_services)
    bootstrap(settings)
    yield settings
    remove_isolated(settings)


def remove_isolated(settings: Settings) -> None:
    """Delete what a test scope made of `make_isolated_settings`: topics and consumer group,
    S3 prefixes, Mongo database, Postgres table and Airflow database, the stream's checkpoint."""
    from psycopg2 import sql

    from app.analysis.repeat_store import connect
    from app.core.kafka import admin_client
    from app.lake.storage import location, s3_filesystem
    from app.pipeline.store import mongo_client

    admin = admin_client(settings)
    topics = [settings.topic_user_events, settings.topic_purchased_item]
    existing = set(admin.list_topics(timeout=10).topics)
    for future in admin.delete_topics([t for t in topics if t in existing]).values():
        future.result(timeout=30)
    groups = admin.list_consumer_groups().result(timeout=10).valid
    if any(group.group_id == settings.drain_group_id for group in groups):
        admin.delete_consumer_groups([settings.drain_group_id])[settings.drain_group_id].result(30)

    fs = s3_filesystem(settings)
    for prefix in (settings.s3_purchases_prefix, settings.s3_quarantine_prefix):
        # Both prefixes sit in one folder of the test's own (`test-<tag>/raw/...`).
        top = f"{settings.s3_bucket}/{prefix.split('/')[0]}"
        if fs.exists(top):
            fs.rm(top, recursive=True)
    checkpoint_fs, checkpoint = location(settings, settings.checkpoint_dir)
    if checkpoint_fs.exists(checkpoint):
        checkpoint_fs.rm(checkpoint, recursive=True)

    client = mongo_client(settings)
    client.drop_database(settings.mongo_database)
    client.close()
    conn = connect(settings)
    try:
        with conn, conn.cursor() as cur:
            table = sql.Identifier(settings.repeat_purchases_table)
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    finally:
        conn.close()
    conn = connect(settings, "postgres")
    conn.autocommit = True  # DROP DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            database = sql.Identifier(settings.postgres_airflow_database)
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
    finally:
        conn.close()
