"""A broker of a three-node cluster lost under load: the API's clients' view, for the fault test
(`tests/e2e/test_broker_loss.py`) and the benchmark (`bench/bench_brokers.py`).

Client threads send `PUT /SendEvent` back to back, each event unique, and record every answer.
Meanwhile the leader of a partition is killed with SIGKILL (no clean shutdown: what a crashed
host does) and started again once acknowledgements have resumed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app.core.config import Settings
from app.core.topics import partition_replicas
from app.schemas import EventName
from tests.support import SpareKafka, start_group, stop_group

USERS = [f"loss-user-{i}" for i in range(12)]


@dataclass(frozen=True)
class Answer:
    event: dict[str, Any]
    status: int | None  # None: no answer (connection error or the client's time-out)
    sent: float  # time.monotonic()
    answered: float

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class BrokerLoss:
    """What the clients saw around the loss of node `killed` (times are time.monotonic())."""

    killed: int
    killed_at: float
    restarted_at: float
    in_sync_at: float  # every partition's replicas all in sync again
    answers: list[Answer] = field(default_factory=list)

    @property
    def acknowledged(self) -> list[dict[str, Any]]:
        return [answer.event for answer in self.answers if answer.acknowledged]

    @property
    def acks_resumed_after(self) -> float:
        """Seconds from the kill to the first acknowledgement of a request sent after it."""
        resumed = min(
            a.answered for a in self.answers if a.acknowledged and a.sent >= self.killed_at
        )
        return resumed - self.killed_at

    @property
    def refused(self) -> list[Answer]:
        return [answer for answer in self.answers if not answer.acknowledged]

    def summary(self) -> str:
        statuses: dict[str, int] = {}
        for answer in self.answers:
            key = str(answer.status)
            statuses[key] = statuses.get(key, 0) + 1
        return (
            f"node {self.killed} killed: acks resumed after {self.acks_resumed_after:.1f} s, "
            f"node restarted {self.restarted_at - self.killed_at:.1f} s after the kill and all "
            f"replicas in sync {self.in_sync_at - self.restarted_at:.1f} s after its restart; "
            f"answers by status {statuses}"
        )


def new_event(counter: int) -> dict[str, Any]:
    names = list(EventName)
    return {
        "UserId": USERS[counter % len(USERS)],
        "SessionId": str(uuid.uuid4()),  # unique: identifies the event in Kafka
        "EventName": names[counter % len(names)].value,
        "TimeStamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "Attributes": {"ProductId": f"P-{counter % 97:04d}", "Price": 10.5, "Discount": 0.0},
    }


class Load:
    """`clients` threads sending events back to back to the API until stopped."""

    def __init__(self, settings: Settings, clients: int) -> None:
        self.url = f"{settings.api_url}/SendEvent"
        # Longer than any answer may take (the produce time-out), so a hang shows as None.
        self.timeout = settings.api_produce_timeout_seconds + 10
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counter = 0
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _next(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _client(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                event = new_event(self._next())
                sent = time.monotonic()
                try:
                    status: int | None = client.put(self.url, json=event).status_code
                except httpx.HTTPError:
                    status = None
                with self._lock:
                    self.answers.append(Answer(event, status, sent, time.monotonic()))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def wait_for(condition: Callable[[], bool], what: str, timeout: float) -> float:
    """Poll `condition` until true; the time.monotonic() it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic()


def all_in_sync(settings: Settings) -> bool:
    try:
        partitions = partition_replicas(settings, timeout=2)
    except Exception:  # a cluster still electing answers nothing useful yet
        return False
    return bool(partitions) and not any(p.under_replicated for p in partitions)


@contextmanager
def serving_api(settings: Settings, log: Path) -> Iterator[None]:
    """The API as the lab serves it (`python -m app.api --no-reload`) on `settings`, its output
    in `log`; stopped afterwards."""
    env = {**os.environ, **settings.as_environment()}
    api = start_group([sys.executable, "-m", "app.api", "--no-reload"], env, log)
    try:
        wait_for(lambda: _api_ready(settings), f"the API (log: {log})", timeout=60)
        yield
    finally:
        stop_group(api)


def _api_ready(settings: Settings) -> bool:
    try:
        return httpx.get(f"{settings.api_url}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def lose_a_leader(
    settings: Settings, nodes: list[SpareKafka], clients: int = 4, steady: float = 3.0
) -> BrokerLoss:
    """Under load from `clients` threads: SIGKILL the leader of the events topic's partition 0
    after `steady` seconds, start it again once acks resumed, wait until every replica is in
    sync, then `steady` more seconds of load."""
    with Load(settings, clients) as load:
        time.sleep(steady)
        leader = next(
            p.leader
            for p in partition_replicas(settings)
            if p.topic == settings.topic_user_events and p.partition == 0
        )
        victim = nodes[leader - 1]
        pid = victim.pid()
        assert pid is not None, f"{victim.name} is not running"
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        try:
            wait_for(
                lambda: any(a.acknowledged and a.sent >= killed_at for a in list(load.answers)),
                f"acknowledgements after the kill of node {leader}",
                timeout=60,
            )
        except AssertionError as exc:
            after = Counter(a.status for a in list(load.answers) if a.sent >= killed_at)
            raise AssertionError(f"{exc}; answers since the kill by status: {after}") from None
        restarted_at = time.monotonic()
        victim.start()
        in_sync_at = wait_for(lambda: all_in_sync(settings), "replicas in sync", timeout=90)
        time.sleep(steady)
    return BrokerLoss(leader, killed_at, restarted_at, in_sync_at, load.answers)
