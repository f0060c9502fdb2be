"""Shared fixtures: the real services, started once per test session, and isolated names.

Tests talk to real Kafka, MongoDB, S3 and PostgreSQL over real connections. `lab_services`
runs `infra-up` once (idempotent: services already up are reused, so the suite can run beside
a running lab). Each test module gets its own topics, Mongo database, S3 prefix and Postgres
table through `isolated_settings`, so tests never see each other's data or the lab's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from app.core.config import Settings, get_settings


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
