"""Fixtures of the lake tests: one Spark JVM for the whole run, and a stream scope per test.

Starting a JVM takes 15-25 s on two cores, so every in-process lake test shares one session
(`local[2]`, with the Kafka and s3a jars). Each test that streams gets its own topic, S3 prefixes
and checkpoint (`stream_settings`), so tests never see each other's orders.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from app.core.config import Settings, get_settings
from app.core.topics import ensure_topics
from app.lake.session import build_spark_session
from app.lake.storage import ensure_bucket
from tests.support import make_isolated_settings, remove_isolated


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    session = build_spark_session(get_settings(), "lake-tests", kafka=True, master="local[2]")
    yield session
    session.stop()


@pytest.fixture
def stream_settings(lab_services: Settings) -> Iterator[Settings]:
    """A topic, lake prefixes and checkpoint of this test's own; a 1 s trigger, small batches.
    Removed from the services afterwards."""
    settings = make_isolated_settings(lab_services).model_copy(
        update={"spark_trigger_interval": "1 second", "spark_max_offsets_per_trigger": 500}
    )
    ensure_topics(settings, [settings.topic_purchased_item])
    ensure_bucket(settings)
    yield settings
    remove_isolated(settings)
