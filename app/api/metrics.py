"""Prometheus metrics of the API, served at `GET /metrics` in the text format.

Each app gets its own registry, so several apps in one process (tests) never collide. Requests are
counted by route template (not raw path, which would let any client create label values). A
request whose client hung up before its body arrived is counted with status 499 (nginx's
"client closed request"), and in `api_client_disconnects`.

When the API runs as several server processes (`API_WORKERS`), prometheus_client keeps each
process's values in a file of the directory named by `PROMETHEUS_MULTIPROC_DIR`, and `/metrics`,
whichever process answers it, sums them: the figures are the whole API's.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE_LATEST", "METRICS_DIRECTORY_VARIABLE", "ApiMetrics", "MetricsMiddleware"]

# Set by `python -m app.api` for its server processes; prometheus_client reads it at import.
METRICS_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The event-loop probe sleeps this long, 20 times a second, and records how late it wakes.
LOOP_PROBE_SECONDS = 0.05


class ApiMetrics:
    """The API's counters and latency histogram, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "api_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "api_request_duration_seconds",
            "Time from request start to the last byte of the response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.records_produced = Counter(
            "api_records_produced",
            "Records acknowledged by Kafka, by topic.",
            ["topic"],
            registry=self.registry,
        )
        self.produce_failures = Counter(
            "api_produce_failures",
            "Requests whose records Kafka did not acknowledge (answered 503), by topic and reason.",
            ["topic", "reason"],
            registry=self.registry,
        )
        self.client_disconnects = Counter(
            "api_client_disconnects",
            "Requests whose client closed the connection before the body arrived, by route.",
            ["route"],
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "api_event_loop_lag_seconds",
            "How late the event loop woke a task sleeping 50 ms: how long it was busy elsewhere.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The metrics in the text format: this process's, or every server process's summed."""
        if not values.ValueClass._multiprocess:
            return generate_latest(self.registry)
        summed = CollectorRegistry()
        MultiProcessCollector(summed)  # type: ignore[no-untyped-call]
        return generate_latest(summed)

    async def probe_event_loop(self) -> None:
        """Record the event loop's lag, for as long as the app runs (its lifespan's task)."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LOOP_PROBE_SECONDS)
            self.loop_lag.observe(max(0.0, time.perf_counter() - started - LOOP_PROBE_SECONDS))


class MetricsMiddleware:
    """Times and counts each request; plain ASGI (BaseHTTPMiddleware costs a task per request)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server sends if the app fails before starting a response

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            if isinstance(route, Route):
                template = route.path
            else:
                # Any path can 404, so those share one label; other route-less answers come from
                # the fixed paths of the docs (/docs, /openapi.json) or a 405 on a known path.
                template = "unmatched" if status == 404 else scope["path"]
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - started)
