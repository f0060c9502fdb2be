"""Fixtures of the API tests: the app with a real producer on isolated topics, and a topic reader.

The app runs in-process (Starlette's TestClient drives its lifespan, so the real confluent-kafka
producer starts and stops with it) against the lab's Kafka, on topics of the test module's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Message
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.config import Settings
from tests import support


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
    return support.read_topic
