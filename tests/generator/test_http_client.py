"""The generator's own HTTP client against a spare HTTP/1.1 server that refuses some requests.

No service: the server answers both routes itself, so the test pins down the client's side of
the guarantees (keep-alive reuse, a 503 with `Connection: close` retried on a new connection,
every record accepted once and recorded as sent).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.generator.runner import RunOptions, StatusPrinter, run_until_signal
from tests.support import free_port


class SpareApi(ThreadingHTTPServer):
    """Answers every third request 503 (`Retry-After: 0`) and closes that connection; takes the
    others, keeping their connections alive."""

    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.lock = threading.Lock()
        self.requests = 0
        self.connections = 0
        self.accepted: list[Any] = []  # the records of the requests answered 200


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: SpareApi

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests += 1
            refused = self.server.requests % 3 == 0
            if not refused:
                self.server.accepted += body if isinstance(body, list) else [body]
        self.send_response(503 if refused else 200)
        self.send_header("Content-Length", "2")
        if refused:
            self.send_header("Retry-After", "0")
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_PUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def spare_api() -> Iterator[SpareApi]:
    server = SpareApi(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_refused_requests_are_retried_on_new_connections_and_each_record_stored_once(
    spare_api: SpareApi, tmp_path: Path
) -> None:
    options = RunOptions(
        url=f"http://127.0.0.1:{spare_api.server_address[1]}",
        users_per_second=10,
        concurrency=4,
        retry_seconds=10,
        request_timeout=5,
        max_batch=1000,
        ticks=2,
    )
    record_path = tmp_path / "accepted.jsonl"
    out, err = io.StringIO(), io.StringIO()
    outcome = run_until_signal(options, 5, StatusPrinter(out, err), record_path)

    tally = outcome.tally
    assert tally.accepted == tally.generated > 0, out.getvalue() + err.getvalue()
    assert tally.retries == spare_api.requests // 3 > 0
    # Each refusal closed its connection; the other answers kept theirs for the next request.
    assert spare_api.connections < spare_api.requests - tally.retries
    recorded = [json.loads(line)["record"] for line in record_path.read_text().splitlines()]

    def canonical(records: list[Any]) -> list[str]:
        return sorted(json.dumps(record, sort_keys=True) for record in records)

    assert canonical(recorded) == canonical(spare_api.accepted)
    assert len(recorded) == tally.accepted
