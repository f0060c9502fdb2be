"""Fixtures of the API tests: the app with a real producer on isolated topics, and a topic reader.

The app runs in-process (Starlette's TestClient drives its lifespan, so the real confluent-kafka
producer starts and stops with it) against the lab's Kafka, on topics of the test module's own.
`running_api` serves it as the lab does instead (uvicorn in its own process), for what only the
server does: time-outs, the connection limit, stopping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
from confluent_kafka import Message
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.config import ROOT, Settings
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


@dataclass(frozen=True)
class RunningApi:
    settings: Settings
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return self.settings.api_url


@contextmanager
def running_api(settings: Settings) -> Iterator[RunningApi]:
    """The API served as the lab serves it (`python -m app.api`, no reload) on a free port."""
    settings = settings.model_copy(update={"api_port": support.free_port()})
    process = subprocess.Popen(
        [sys.executable, "-m", "app.api", "--no-reload"],
        cwd=ROOT,
        env={**os.environ, **settings.as_environment()},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the API exited with {process.returncode}"
            assert time.monotonic() < deadline, "the API was not ready within 60 s"
            try:
                if httpx.get(f"{settings.api_url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield RunningApi(settings, process)
    finally:
        process.terminate()
        process.wait(timeout=60)
