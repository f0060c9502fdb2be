"""Faults under load (issue 7): what the API acknowledged survives, nothing is duplicated.

The Kafka outage is real: the API and the generator run as processes against a spare broker
of the lab's jars, which is stopped mid-run and started again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.routes import EVENT_EXAMPLE
from app.core.config import ROOT, Settings
from tests.support import SpareKafka, free_port, read_topic, spare_kafka

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outage_settings(lab_services: Settings) -> Iterator[tuple[Settings, SpareKafka]]:
    with spare_kafka(
        lab_services, "outage", api_port=free_port(), api_produce_timeout_seconds=3.0
    ) as broker:
        yield broker.settings, broker


def _topic_values(settings: Settings, topic: str) -> list[bytes]:
    return [message.value() for message in read_topic(settings, topic)]


def _identity(event: dict[str, str]) -> tuple[str, str, str]:
    return event["SessionId"], event["EventName"], event["TimeStamp"]


def test_generator_load_survives_a_broker_outage(
    outage_settings: tuple[Settings, SpareKafka], tmp_path: Path
) -> None:
    settings, broker = outage_settings
    env = {**os.environ, **settings.as_environment(), "PYTHONPATH": str(ROOT)}
    with (tmp_path / "api.log").open("wb") as api_log:
        api = subprocess.Popen(
            [sys.executable, "-m", "app.api", "--no-reload"],
            env=env,
            cwd=ROOT,
            stdout=api_log,
            stderr=subprocess.STDOUT,
        )
    record_file = tmp_path / "acknowledged.jsonl"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{settings.api_url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not become ready"
            time.sleep(0.5)
        generator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.generator",
                "--seed",
                "11",
                "--count",
                "14",
                "--users-per-second",
                "8",
                "--retry-seconds",
                "60",
                "--record-file",
                str(record_file),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(4)
        broker.stop()
        outage_started = time.monotonic()
        # While the broker is down the API must refuse with 503 quickly, never acknowledge.
        probe = httpx.put(
            f"{settings.api_url}/SendEvent",
            json={**EVENT_EXAMPLE, "UserId": "outage-probe"},
            timeout=30,
        )
        assert probe.status_code == 503, probe.text
        assert "Retry-After" in probe.headers
        time.sleep(max(0.0, 8 - (time.monotonic() - outage_started)))
        broker.start()
        output, _ = generator.communicate(timeout=300)
        assert generator.returncode == 0, output
    finally:
        api.terminate()
        api.wait(30)

    acknowledged = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert acknowledged, "the generator acknowledged nothing"
    orders = [a["record"] for a in acknowledged if a["kind"] == "purchase"]
    events = [a["record"] for a in acknowledged if a["kind"] == "event"]
    stored_orders = Counter(
        json.loads(v)["OrderId"] for v in _topic_values(settings, settings.topic_purchased_item)
    )
    stored_events = Counter(
        map(_identity, map(json.loads, _topic_values(settings, settings.topic_user_events)))
    )
    # Exactly what was acknowledged: nothing lost, nothing twice, nothing refused stored.
    assert stored_orders == Counter(order["OrderId"] for order in orders)
    assert stored_events == Counter(
        (e["SessionId"], e["EventName"], e["TimeStamp"]) for e in events
    )
