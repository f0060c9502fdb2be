"""Shared fixtures: the real services, started once per test session, and isolated names.

Tests talk to real Kafka, MongoDB, S3 and PostgreSQL over real connections. `lab_services`
runs `infra-up` once (idempotent: services already up are reused, so the suite can run beside
a running lab). Each test module gets its own topics, Mongo database, S3 prefix and Postgres
table through `isolated_settings`, so tests never see each other's data or the lab's; the
fixture removes them again (`remove_isolated`), so repeated runs leave the services as they were.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.core.config import Settings, get_settings
from tests.support import make_isolated_settings, remove_isolated

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
    from app.infra.lifecycle import up

    settings = get_settings()
    up(settings)
    return settings


@pytest.fixture(scope="module")
def isolated_settings(lab_services: Settings) -> Iterator[Settings]:
    """Per-module names on the shared services; topics and buckets bootstrapped."""
    from app.infra.bootstrap import bootstrap

    settings = make_isolated_settings(lab_services)
    bootstrap(settings)
    yield settings
    remove_isolated(settings)
