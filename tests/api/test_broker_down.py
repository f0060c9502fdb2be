"""Kafka down: the API still starts, answers 503 within its bound, never acknowledges falsely,
and recovers by itself when the broker is back (even a broker that lost its data).

The outage is real: a second broker of the lab's own Kafka jars, on free ports, is stopped and
started again under a running API. The lab's broker is never touched.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Message
from fastapi.testclient import TestClient
from httpx import Response

from app.api.main import create_app
from app.api.routes import EVENT_EXAMPLE, PURCHASE_EXAMPLE
from app.core.config import Settings
from app.core.topics import ensure_topics
from app.schemas import UserEvent
from tests.support import SpareKafka, free_port, spare_kafka

TIMEOUT = 3.0  # the API's produce timeout in this module
# What the bound may be exceeded by: the event loop and the test client's own work, on a CI
# machine that may be busy. A broken time-out shows as a hang (tens of seconds), far past this.
SLACK = 5.0


@pytest.fixture(scope="module")
def spare_broker(lab_services: Settings) -> Iterator[SpareKafka]:
    with spare_kafka(lab_services, "broker-down", api_produce_timeout_seconds=TIMEOUT) as broker:
        yield broker


def _event(number: int) -> dict[str, object]:
    return {**copy.deepcopy(EVENT_EXAMPLE), "UserId": f"outage-{number}"}


def _timed(call: Callable[[], Response]) -> tuple[Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_an_outage_gives_503_in_time_and_the_api_recovers_alone(
    spare_broker: SpareKafka, read_topic: Callable[[Settings, str], list[Message]]
) -> None:
    settings = spare_broker.settings
    sent: list[bytes] = []  # canonical values of every event sent
    acknowledged: list[bytes] = []  # ... of those answered 200

    with TestClient(create_app(settings)) as client:

        def send(number: int) -> Response:
            event = _event(number)
            sent.append(UserEvent.model_validate(event).to_json_bytes())
            response, took = _timed(lambda: client.put("/SendEvent", json=event))
            assert response.status_code in (200, 503), response.text
            assert took <= TIMEOUT + SLACK, f"answered after {took:.1f} s"
            if response.status_code == 200:
                acknowledged.append(sent[-1])
            return response

        assert send(0).status_code == 200
        spare_broker.stop()

        for number in range(1, 4):
            refused = send(number)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"].isdigit()
            assert "did not acknowledge" in refused.json()["detail"]
        batch, took = _timed(
            lambda: client.post("/PurchasedItems", json=[copy.deepcopy(PURCHASE_EXAMPLE)])
        )
        assert batch.status_code == 503 and took <= TIMEOUT + SLACK
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["kafka"] == "unavailable"
        assert client.get("/health/ready").status_code == 503

        spare_broker.start()
        number = 4
        deadline = time.monotonic() + 60
        while send(number).status_code != 200:
            assert time.monotonic() < deadline, "the API did not recover within 60 s"
            number += 1
        # Recovered for good: the next requests all succeed.
        for later in range(number + 1, number + 6):
            assert send(later).status_code == 200
        assert client.get("/health/ready").json() == {
            "status": "ready",
            "kafka": "ready",
            "detail": None,
        }

    stored = [m.value() for m in read_topic(settings, settings.topic_user_events)]
    assert set(acknowledged) <= set(stored), "a record answered 200 is missing from Kafka"
    assert set(stored) <= set(sent)
    assert len(stored) == len(set(stored)), "a record was stored twice"


def test_the_api_recovers_even_from_a_broker_that_lost_its_data(spare_broker: SpareKafka) -> None:
    """A broker that comes back empty (new cluster, topics recreated) no longer knows the API's
    idempotent producer; the API must carry on without a restart all the same."""
    settings = spare_broker.settings
    with TestClient(create_app(settings)) as client:
        assert client.put("/SendEvent", json=_event(100)).status_code == 200
        spare_broker.stop()
        shutil.rmtree(spare_broker.data_dir)
        spare_broker.start()
        ensure_topics(settings)
        deadline = time.monotonic() + 60
        while client.put("/SendEvent", json=_event(101)).status_code != 200:
            assert time.monotonic() < deadline, "the API did not recover within 60 s"
        assert all(client.put("/SendEvent", json=_event(102)).status_code == 200 for _ in range(5))


def test_the_api_starts_and_answers_while_kafka_is_unreachable(lab_services: Settings) -> None:
    settings = lab_services.model_copy(
        update={
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",  # nothing listens there
            "api_produce_timeout_seconds": 1.0,
        }
    )
    started = time.monotonic()
    with TestClient(create_app(settings)) as client:
        assert time.monotonic() - started < 2, "startup waited for Kafka"
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert health.json()["kafka"] == "unavailable"
        assert "not reachable" in health.json()["detail"]
        assert client.get("/health/ready").status_code == 503
        refused, took = _timed(lambda: client.put("/SendEvent", json=_event(0)))
        assert refused.status_code == 503 and took <= 1.0 + SLACK
        assert refused.headers["Retry-After"].isdigit()
        # A bad request is still refused for what it is, Kafka or not.
        assert client.put("/SendEvent", json={"UserId": 1}).status_code == 422
