"""`python -m app.generator` against the real API: every record accounted for, none silently lost.

Both run as the Procfile runs them: the API as `python -m app.api` on a free port with this
module's topics, the generator as `python -m app.generator`. The API's /metrics say what Kafka
acknowledged.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.core.config import ROOT, Settings
from app.generator.crowd import Crowd
from app.generator.processes import derived_seed, shares
from app.schemas import Purchase, UserEvent

# Small enough that a tick's orders need several batches, and a bigger batch is refused.
API_MAX_BATCH = 2


@dataclass(frozen=True)
class RunningApi:
    url: str
    settings: Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings_env(settings: Settings, max_batch: int = API_MAX_BATCH) -> dict[str, str]:
    """The environment that makes a child process use these settings' Kafka and topics."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "TOPIC_USER_EVENTS": settings.topic_user_events,
        "TOPIC_PURCHASED_ITEM": settings.topic_purchased_item,
        "API_PORT": str(settings.api_port),
        "API_MAX_BATCH": str(max_batch),
    }


@pytest.fixture(scope="module")
def api(isolated_settings: Settings) -> Iterator[RunningApi]:
    settings = isolated_settings.model_copy(update={"api_port": free_port()})
    process = subprocess.Popen(
        [sys.executable, "-m", "app.api", "--no-reload"], cwd=ROOT, env=settings_env(settings)
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "the API exited while starting"
            try:
                if httpx.get(f"{settings.api_url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API was not ready within 30 s"
            time.sleep(0.2)
        yield RunningApi(settings.api_url, settings)
    finally:
        process.terminate()
        process.wait(timeout=30)


def generator(
    url: str, settings: Settings, *args: str, max_batch: int = API_MAX_BATCH
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.generator", "--url", url, *args],
        cwd=ROOT,
        env=settings_env(settings, max_batch),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


SUMMARY_COUNTS = re.compile(
    r"(generated|accepted|rejected|failed|interrupted mid-request|never sent) (\d+)"
)


def tally(summary: str) -> dict[str, int]:
    """The record counts of the generator's summary, by outcome's first word."""
    return {name.split()[0]: int(value) for name, value in SUMMARY_COUNTS.findall(summary)}


def produced(api: RunningApi) -> dict[str, float]:
    """Records acknowledged by Kafka so far, by topic, from the API's metrics."""
    text = httpx.get(f"{api.url}/metrics").text
    pattern = r'api_records_produced_total\{topic="([^"]+)"\} (\S+)'
    return {topic: float(value) for topic, value in re.findall(pattern, text)}


def test_a_run_is_fully_accepted_recorded_and_follows_the_seed(
    api: RunningApi, tmp_path: Path
) -> None:
    before = produced(api)
    record_file = tmp_path / "accepted.jsonl"
    started = time.monotonic()
    run = generator(
        api.url, api.settings, "--count", "3", "--users-per-second", "15", "--seed", "11",
        "--record-file", str(record_file),
    )  # fmt: skip
    code, out, err = finish(run)
    took = time.monotonic() - started
    assert code == 0, out + err
    counts = tally(out)
    assert counts["generated"] == counts["accepted"] > 0, out
    assert counts["rejected"] == counts["failed"] == 0
    assert "after 3 ticks" in out
    assert took >= 2.0, "three ticks must be a second apart"

    lines = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert len(lines) == counts["accepted"]
    events = [UserEvent.model_validate(x["record"]) for x in lines if x["kind"] == "event"]
    orders = [Purchase.model_validate(x["record"]) for x in lines if x["kind"] == "purchase"]
    # What was sent is what the seed builds (timestamps aside: they are the time of sending).
    crowd = Crowd(11)
    built = [s for _ in range(3) for s in crowd.tick(events[0].timestamp, 15)]

    def content(records: list[UserEvent] | list[Purchase]) -> list[str]:
        return sorted(r.model_dump_json(exclude={"timestamp"}) for r in records)

    assert content(events) == content([e for s in built for e in s.events])
    assert content(orders) == content([p for s in built for p in s.purchases])

    after = produced(api)
    for topic, count in (
        (api.settings.topic_user_events, len(events)),
        (api.settings.topic_purchased_item, len(orders)),
    ):
        assert after.get(topic, 0) - before.get(topic, 0) == count


def test_processes_share_the_users_and_one_record_file_holds_all_they_sent(
    api: RunningApi, tmp_path: Path
) -> None:
    record_file = tmp_path / "accepted.jsonl"
    # A part file a killed run left (its records were acknowledged) is merged first, not lost.
    leftover = '{"kind": "event", "record": "acknowledged before a kill"}\n'
    (tmp_path / "accepted.jsonl.part3").write_text(leftover)
    run = generator(
        api.url, api.settings, "--processes", "2", "--count", "2", "--users-per-second", "15",
        "--seed", "11", "--record-file", str(record_file),
    )  # fmt: skip
    code, out, err = finish(run)
    assert code == 0, out + err
    counts = tally(out)
    assert counts["generated"] == counts["accepted"] > 0, out
    assert "after 2 ticks" in out
    assert [path.name for path in tmp_path.iterdir()] == [record_file.name], "parts left over"
    assert "merged the records a run cut short left" in err

    first, *rest = record_file.read_text().splitlines(keepends=True)
    assert first == leftover
    lines = [json.loads(line) for line in rest]
    assert len(lines) == counts["accepted"]
    events = [UserEvent.model_validate(x["record"]) for x in lines if x["kind"] == "event"]
    # Process i sends what its derived seed builds, with its share of the users.
    built = [
        session
        for index, users in enumerate(shares(15, 2))
        for crowd in [Crowd(derived_seed(11, index))]
        for _ in range(2)
        for session in crowd.tick(events[0].timestamp, users)
    ]
    assert sorted(e.model_dump_json(exclude={"timestamp"}) for e in events) == sorted(
        e.model_dump_json(exclude={"timestamp"}) for s in built for e in s.events
    )
    assert len(lines) - len(events) == sum(len(s.purchases) for s in built)


def test_an_unreachable_api_means_failed_records_reported(api: RunningApi) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, err = finish(generator(dead, api.settings, "--count", "1", "--retry-seconds", "1"))
    assert code == 1
    counts = tally(out)
    assert counts["failed"] == counts["generated"] > 0
    assert counts["accepted"] == 0
    assert "failed after retrying for 1 s" in err
    assert "cannot reach the API" in err
    assert "requests retried:" in out


def test_a_refusal_is_counted_and_reported_with_the_api_reason(api: RunningApi) -> None:
    # This generator believes batches of 1000 are fine; the API takes API_MAX_BATCH.
    run = generator(
        api.url, api.settings, "--count", "2", "--users-per-second", "40", "--seed", "3",
        max_batch=1000,
    )  # fmt: skip
    code, out, err = finish(run)
    assert code == 1
    counts = tally(out)
    assert counts["rejected"] > API_MAX_BATCH
    assert counts["accepted"] + counts["rejected"] == counts["generated"]
    assert f"at most {API_MAX_BATCH} are accepted per request" in err
    assert "/PurchasedItems: 413" in err


def test_ctrl_c_stops_with_a_summary_that_accounts_for_every_record(api: RunningApi) -> None:
    before = sum(produced(api).values())
    run = generator(api.url, api.settings, "--users-per-second", "30")
    # Interrupt once records flow, however long the start takes on a busy machine.
    deadline = time.monotonic() + 60
    while sum(produced(api).values()) == before:
        assert run.poll() is None and time.monotonic() < deadline, "the generator sent nothing"
        time.sleep(0.2)
    time.sleep(1.0)  # and with some requests in flight
    run.send_signal(signal.SIGINT)
    _, out, err = finish(run, timeout=60)
    assert "interrupted after" in out, out + err
    counts = tally(out)
    assert counts["accepted"] > 0
    outcomes = ("accepted", "rejected", "failed", "interrupted", "never")
    assert sum(counts[name] for name in outcomes) == counts["generated"], out
