"""One client cannot stall the API: junk bodies, slow clients, clients that hang up.

Runs the real server (`python -m app.api --no-reload`: uvicorn with the lab's options) against
the lab's Kafka on topics of this module's own, with short time-outs and a small connection limit
so the slow-client cases stay short.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from app.api.routes import EVENT_EXAMPLE, PURCHASE_EXAMPLE
from app.api.validation import INLINE_BYTES
from app.core.config import Settings
from tests.api.conftest import RunningApi, running_api

HEADER_TIMEOUT = 1
BODY_TIMEOUT = 1.0
MAX_CONNECTIONS = 16
# Target: 100 ms (bench/bench_api.py measures it). The bound is looser for a loaded 2-core CI
# machine, and still far below what a stalled event loop gives: the whole time of refusing a
# junk body, 2 s on the lab's machine before the fix.
P99_BOUND_SECONDS = 0.5
SAMPLES = 200  # of each probe; p99 is then the second slowest
PROBE_CAP_SECONDS = 60.0
# What the server's time-outs may be exceeded by before the test calls them missing.
SLACK = 2.0


@pytest.fixture(scope="module")
def api(isolated_settings: Settings) -> Iterator[RunningApi]:
    settings = isolated_settings.model_copy(
        update={
            "api_header_timeout_seconds": HEADER_TIMEOUT,
            "api_body_timeout_seconds": BODY_TIMEOUT,
            "api_max_connections": MAX_CONNECTIONS,
            # The connection limit is per server process: one, to reach it for sure.
            "api_workers": 1,
        }
    )
    with running_api(settings) as running:
        yield running


def junk_object(size: int) -> bytes:
    """A JSON object of exactly `size` bytes made of unknown keys: the costliest 422."""
    keys = (size - 1) // 14  # `"k00000000":0,` each
    body = b"{" + b",".join(b'"k%08d":0' % i for i in range(keys)) + b"}"
    return body + b" " * (size - len(body))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def test_junk_bodies_do_not_stall_other_clients(api: RunningApi) -> None:
    limit = api.settings.api_max_body_bytes
    junk = {
        "/SendEvent": junk_object(limit),
        "/PurchasedItems": b"[" + junk_object(limit - 2) + b"]",
    }
    stop = threading.Event()
    junk_answers: list[int] = []

    def send_junk(path: str) -> None:
        """Back to back: the next body as soon as the last is answered."""
        with httpx.Client(base_url=api.url, timeout=120) as client:
            while not stop.is_set():
                method = "PUT" if path == "/SendEvent" else "POST"
                response = client.request(
                    method, path, content=junk[path], headers={"Content-Type": "application/json"}
                )
                junk_answers.append(response.status_code)

    senders = [threading.Thread(target=send_junk, args=(path,)) for path in junk]
    latencies: dict[str, list[float]] = {"/health": [], "/SendEvent": []}
    with httpx.Client(base_url=api.url, timeout=60) as client:
        probes: dict[str, Callable[[], httpx.Response]] = {
            "/health": lambda: client.get("/health"),
            "/SendEvent": lambda: client.put("/SendEvent", json=copy.deepcopy(EVENT_EXAMPLE)),
        }
        for sender in senders:
            sender.start()
        try:
            time.sleep(0.5)  # the junk is on its way
            deadline = time.monotonic() + PROBE_CAP_SECONDS
            while len(latencies["/SendEvent"]) < SAMPLES:
                answered = len(latencies["/SendEvent"])
                assert time.monotonic() < deadline, f"{answered} answers in {PROBE_CAP_SECONDS:g} s"
                for path, probe in probes.items():
                    started = time.perf_counter()
                    response = probe()
                    latencies[path].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                time.sleep(0.01)
        finally:
            stop.set()
            for sender in senders:
                sender.join()

    assert junk_answers and set(junk_answers) == {422}, junk_answers
    for path, measured in latencies.items():
        p99 = percentile(measured, 0.99)
        assert p99 <= P99_BOUND_SECONDS, f"{path}: p99 {p99 * 1000:.0f} ms under junk"


def _connect(api: RunningApi) -> socket.socket:
    connection = socket.create_connection((api.settings.api_host, api.settings.api_port))
    connection.settimeout(HEADER_TIMEOUT + BODY_TIMEOUT + SLACK)
    return connection


def _head(path: str, length: int) -> bytes:
    return (
        f"PUT {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _until_closed(connection: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received, time.monotonic() - started


@pytest.mark.parametrize("sent", [b"", b"PUT /SendEvent HTTP/1.1\r\nHost: te"])
def test_a_connection_without_complete_headers_is_closed(api: RunningApi, sent: bytes) -> None:
    with _connect(api) as connection:
        connection.sendall(sent)
        received, took = _until_closed(connection)
    assert received == b""
    assert HEADER_TIMEOUT * 0.9 <= took <= HEADER_TIMEOUT + SLACK, f"closed after {took:.1f} s"


def test_a_body_that_does_not_arrive_in_time_gets_a_408(api: RunningApi) -> None:
    with _connect(api) as connection:
        connection.sendall(_head("/SendEvent", 1000) + b'{"UserId": ')
        received, took = _until_closed(connection)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"API_BODY_TIMEOUT_SECONDS" in received
    assert BODY_TIMEOUT * 0.9 <= took <= BODY_TIMEOUT + SLACK, f"answered after {took:.1f} s"


def _metric_lines(api: RunningApi, prefix: str) -> list[str]:
    text = httpx.get(f"{api.url}/metrics").text
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_a_client_gone_mid_body_is_counted_not_a_500(api: RunningApi) -> None:
    with _connect(api) as connection:
        connection.sendall(_head("/SendEvent", 100_000) + b'{"UserId": "gone"')
    counter = 'api_client_disconnects_total{route="/SendEvent"}'
    deadline = time.monotonic() + SLACK
    while not _metric_lines(api, counter):
        assert time.monotonic() < deadline, "the disconnect was not counted"
        time.sleep(0.05)
    assert _metric_lines(api, counter) == [f"{counter} 1.0"]
    assert not [line for line in _metric_lines(api, "api_requests_total") if 'status="5' in line]


def test_connections_over_the_limit_get_a_503(api: RunningApi) -> None:
    idle = [_connect(api) for _ in range(MAX_CONNECTIONS)]
    try:
        refused = httpx.get(f"{api.url}/health")
    finally:
        for connection in idle:
            connection.close()
    assert refused.status_code == 503
    deadline = time.monotonic() + SLACK
    while httpx.get(f"{api.url}/health").status_code != 200:
        assert time.monotonic() < deadline, "closed connections still count against the limit"
        time.sleep(0.05)


def test_stopping_waits_for_requests_at_most_the_graceful_time_out(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings.model_copy(
        update={"api_graceful_shutdown_seconds": 1, "api_body_timeout_seconds": 60.0}
    )
    with running_api(settings) as api, _connect(api) as connection:
        connection.sendall(_head("/SendEvent", 1000))  # a body that never comes
        time.sleep(0.2)
        api.process.terminate()
        started = time.monotonic()
        api.process.wait(timeout=60)
        took = time.monotonic() - started
    # Past the grace: the app's own shutdown and the interpreter's exit, then far below 60 s.
    assert took <= settings.api_graceful_shutdown_seconds + 2 * SLACK, f"stopped after {took:.1f} s"


def _workers(api: RunningApi) -> list[psutil.Process]:
    """The API's validation worker processes: the leaves of its tree (with several server
    processes, those are the children of the API's own)."""
    return [
        process
        for process in psutil.Process(api.process.pid).children(recursive=True)
        if "spawn_main" in " ".join(process.cmdline()) and not process.children()
    ]


def test_a_dead_validation_worker_costs_a_503_not_the_service(api: RunningApi) -> None:
    orders = [{**copy.deepcopy(PURCHASE_EXAMPLE), "OrderId": f"w-{i}"} for i in range(100)]
    assert len(json.dumps(orders)) > INLINE_BYTES  # validated by a worker
    workers = _workers(api)
    assert workers
    for worker in workers:
        worker.kill()
    psutil.wait_procs(workers, timeout=10)

    first = httpx.post(f"{api.url}/PurchasedItems", json=orders, timeout=30)
    assert first.status_code in (200, 503), first.text
    if first.status_code == 503:
        assert first.headers["Retry-After"].isdigit()
    assert httpx.post(f"{api.url}/PurchasedItems", json=orders, timeout=30).status_code == 200


def test_large_bodies_are_refused_like_small_ones(api: RunningApi) -> None:
    """Bodies over INLINE_BYTES are validated by a worker process; the answers are the same."""
    max_batch = api.settings.api_max_batch
    orders = [{**copy.deepcopy(PURCHASE_EXAMPLE), "OrderId": f"r-{i}"} for i in range(max_batch)]
    orders[-1]["PaymentType"] = "Bitcoin"
    invalid = httpx.post(f"{api.url}/PurchasedItems", json=orders, timeout=30)
    assert invalid.status_code == 422, invalid.text
    assert [e["field"] for e in invalid.json()["errors"]] == [f"[{max_batch - 1}].PaymentType"]

    too_many = [*orders, {**orders[0], "OrderId": "one-too-many"}]
    refused = httpx.post(f"{api.url}/PurchasedItems", json=too_many, timeout=30)
    assert refused.status_code == 413 and f"at most {max_batch}" in refused.json()["detail"]

    broken = json.dumps(orders).encode()[:-1]
    assert len(broken) > INLINE_BYTES
    response = httpx.post(
        f"{api.url}/PurchasedItems",
        content=broken,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]


def test_the_server_and_validation_workers_end_with_a_killed_api(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings.model_copy(update={"api_workers": 2})
    with running_api(settings) as api:
        # Ready means one server process answers; the other may still be starting its pool.
        deadline = time.monotonic() + 30
        expected = settings.api_validation_workers_per_process * settings.api_workers
        while len(workers := _workers(api)) < expected:
            assert time.monotonic() < deadline, f"{len(workers)} validation workers"
            time.sleep(0.2)
        tree = psutil.Process(api.process.pid).children(recursive=True)
        api.process.kill()
        _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"{[' '.join(p.cmdline())[:80] for p in alive]} outlived the API"
