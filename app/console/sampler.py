"""The console's sampler: runs every probe on its own schedule, turns totals into rates, keeps
ten minutes of rates in memory, and assembles the snapshot the page shows.

A probe runs in a worker thread; one that hangs (a service half up) only delays its own hop: the
next tick skips it while it is in flight and the page keeps showing its last answer. A probe
that raises makes its hop "down", with the reason and the command that fixes it.

A probe that takes long is run less often: after a read of t seconds it waits at least
t x (1 / PROBE_DUTY - 1) before the next, so no probe keeps a service busy more than a tenth
of the time, however large the lab has grown (a read that scans grows with its data).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from pymongo.errors import ServerSelectionTimeoutError

from app.console.probes import Reading
from app.core.config import Settings

HISTORY_SECONDS = 600
# The most of the time a probe's reads may take: a read of t seconds is followed by a pause of
# at least t x (1 / PROBE_DUTY - 1), beside the probe's own interval.
PROBE_DUTY = 0.1


@dataclass(frozen=True)
class Hop:
    """A box of the pipeline on the page: what it is and what to run when it is down."""

    key: str
    title: str
    where: str
    fix: str


@dataclass(frozen=True)
class Probe:
    key: str
    hop: str
    every: float
    read: Callable[[], Reading]


# The rates drawn as sparklines: counter name -> label.
SERIES = {
    "api_requests": "API requests/s",
    "api_records": "accepted records/s",
    "kafka_user_events": "UserEvents records/s",
    "kafka_purchased_item": "PurchasedItem records/s",
    "mongo_events": "events stored in MongoDB/s",
    "spark_rows": "purchases into the lake/s",
}


def hops(settings: Settings) -> list[Hop]:
    """The pipeline's hops in the order of README's diagram."""
    return [
        Hop("api", "Ingest API", settings.api_url, "run `task up` (or `honcho start api`)"),
        Hop("kafka", "Kafka", settings.kafka_servers, "run `task infra-up`"),
        Hop(
            "airflow",
            "Airflow DAG",
            settings.airflow_url,
            "run `task up` (or `honcho start airflow`)",
        ),
        Hop("mongo", "MongoDB", settings.mongo_url, "run `task infra-up`"),
        Hop(
            "spark",
            "Spark stream",
            settings.checkpoint_dir,
            "run `task up` (or `honcho start spark`)",
        ),
        Hop("lake", "S3 lake", settings.s3_endpoint_url, "run `task infra-up`"),
        Hop(
            "postgres",
            "PostgreSQL",
            f"{settings.postgres_host}:{settings.postgres_port}",
            "run `task infra-up`, then `task analyze` to write the table",
        ),
    ]


# Signs, in the clients' own error texts, of a service that is not there at all.
NOT_REACHABLE = (
    "Connection refused",  # psycopg2, pymongo
    "Broker transport failure",  # confluent-kafka
    "Could not connect to the endpoint URL",  # botocore (s3fs)
)


def describe(exc: BaseException) -> str:
    """One line a person can read: the error's kind and its first line, without a traceback."""
    text = str(exc)
    if isinstance(exc, httpx.ConnectError | ConnectionRefusedError) or any(
        sign in text for sign in NOT_REACHABLE
    ):
        return "not reachable: nothing answers there (connection refused)"
    if isinstance(exc, httpx.TimeoutException | TimeoutError | ServerSelectionTimeoutError):
        return "no answer in time (timed out)"
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        if status in (401, 403):
            return f"refused the lab's login (HTTP {status}): check AIRFLOW_ADMIN_USER/PASSWORD"
        return f"answered HTTP {status} to {exc.request.url.path}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


@dataclass
class Result:
    at: float
    reading: Reading | None = None
    error: str | None = None


class Sampler:
    """Runs the probes and keeps their latest results and the rates' recent history."""

    def __init__(self, settings: Settings, probes: list[Probe]) -> None:
        self.settings = settings
        self.hops = hops(settings)
        self.probes = probes
        self.results: dict[str, Result] = {}
        self.last_started: dict[str, float] = {}
        self.not_before: dict[str, float] = {}  # probe key -> the pause its last read earned
        self.in_flight: dict[str, Future[Reading]] = {}
        self.counters: dict[str, tuple[float, float]] = {}
        self.rates: dict[str, float | None] = {}
        self.counters_of: dict[str, set[str]] = {}  # probe key -> the counters it reports
        self.history: deque[tuple[float, dict[str, float | None]]] = deque()
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="probe")

    def tick(self) -> None:
        """Record the rates as they stand, then start every probe that is due and not still
        running (their answers make the next point)."""
        with self.lock:
            self.history.append((time.time(), dict(self.rates)))
            while self.history and self.history[0][0] < time.time() - HISTORY_SECONDS:
                self.history.popleft()
        now = time.monotonic()
        for probe in self.probes:
            due = now - self.last_started.get(probe.key, -probe.every) >= probe.every
            due = due and now >= self.not_before.get(probe.key, now)
            if due and probe.key not in self.in_flight:
                self.last_started[probe.key] = now
                future = self.pool.submit(probe.read)
                self.in_flight[probe.key] = future
                future.add_done_callback(functools.partial(self._finished, probe.key))

    def _finished(self, key: str, future: Future[Reading]) -> None:
        at = time.monotonic()
        took = at - self.last_started.get(key, at)
        self.not_before[key] = at + took * (1 / PROBE_DUTY - 1)
        self.in_flight.pop(key, None)
        try:
            reading = future.result()
        except Exception as exc:  # a down service is a state of its hop, not a crash
            with self.lock:
                self.results[key] = Result(at, error=describe(exc))
                # No rate while down, and none computed across the outage when it is back.
                for name in self.counters_of.get(key, ()):
                    self.rates[name] = None
                    self.counters.pop(name, None)
            return
        with self.lock:
            self.results[key] = Result(at, reading, error=reading.down)
            self.counters_of[key] = set(reading.counters)
            for name, value in reading.counters.items():
                self._count(name, value, at)

    def _count(self, name: str, value: float, at: float) -> None:
        previous = self.counters.get(name)
        self.counters[name] = (at, value)
        if previous is None or at <= previous[0]:
            return
        # A total that went down was reset (API restarted, topic re-created): no rate this once.
        rate = (value - previous[1]) / (at - previous[0])
        self.rates[name] = round(rate, 2) if rate >= 0 else None

    def snapshot(self) -> dict[str, Any]:
        """Every hop's state, figures and rates, and the history of the rates (JSON-ready)."""
        with self.lock:
            results = dict(self.results)
            rates = dict(self.rates)
            history = list(self.history)
            spark_read = self.counters.get("spark_rows")
        page: dict[str, Any] = {}
        for hop in self.hops:
            probes = [p for p in self.probes if p.hop == hop.key]
            errors = [
                results[p.key].error for p in probes if p.key in results and results[p.key].error
            ]
            figures: dict[str, Any] = {}
            for p in probes:
                result = results.get(p.key)
                if result is not None and result.reading is not None:
                    figures.update(result.reading.figures)
            state = "down" if errors else ("up" if figures else "waiting")
            page[hop.key] = {
                "title": hop.title,
                "where": hop.where,
                "state": state,
                "reason": errors[0] if errors else None,
                "fix": hop.fix if errors else None,
                "figures": figures,
            }
        page["spark"]["figures"]["pending"] = self._spark_pending(page, spark_read)
        return {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rates": {name: rates.get(name) for name in SERIES},
            "labels": SERIES,
            "hops": page,
            "history": {
                "t": [t for t, _ in history],
                "series": {name: [point.get(name) for _, point in history] for name in SERIES},
            },
        }

    def _spark_pending(self, page: dict[str, Any], read: tuple[float, float] | None) -> int | None:
        """Purchases in Kafka that no committed batch has read yet (None when unknown)."""
        topics = page["kafka"]["figures"].get("topics", [])
        topic = self.settings.topic_purchased_item
        total: int | None = next((t["records"] for t in topics if t["topic"] == topic), None)
        if total is None or read is None:
            return None
        return max(total - int(read[1]), 0)

    def run(self, stop: threading.Event) -> None:
        """Tick every `console_tick_seconds` until `stop` is set."""
        while not stop.is_set():
            self.tick()
            stop.wait(self.settings.console_tick_seconds)
        self.pool.shutdown(wait=False, cancel_futures=True)
