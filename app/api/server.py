"""Serving the API: uvicorn with the lab's limits for slow and greedy clients.

Each connection's writes in one step of the event loop go out in one system call
(`CoalescingTransport`: a response's headers and body).

- headers: `HeaderDeadlineProtocol` closes a connection whose request headers are not complete
  `API_HEADER_TIMEOUT_SECONDS` after it opened or after its previous answer (uvicorn alone only
  closes idle keep-alive connections, so a client sending nothing, or its headers a byte at a
  time, would hold a connection forever);
- body: the routes answer 408 to a body not there `API_BODY_TIMEOUT_SECONDS` after its headers
  (`app.api.ingest.read_json_body`);
- connections: from `API_MAX_CONNECTIONS` open connections (or requests in progress) on, new
  requests get uvicorn's 503;
- stop: requests in progress get `API_GRACEFUL_SHUTDOWN_SECONDS` to finish.

Without live reload, `API_WORKERS` server processes (default: one per core) share the port:
one Python process tops out at one core. uvicorn's supervisor restarts a worker that dies; a
worker whose supervisor is gone stops (`app.api.main`). Their metrics are summed at `/metrics`
(prometheus_client's multiprocess mode, in a directory of `<lab_home>/run/api-metrics/` that
lives as long as the supervisor).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any, cast

import psutil  # type: ignore[import-untyped]  # no stubs installed
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.metrics import METRICS_DIRECTORY_VARIABLE
from app.core.config import ROOT, Settings, get_settings
from app.core.logs import setup_logging
from app.core.reload import unwatched_packages


class CoalescingTransport:
    """A connection's transport whose writes in one step of the event loop reach the socket as
    one: uvicorn writes a response's status line and headers, then its body, each with a system
    call of its own (measured: the first of them was the largest single cost of a `SendEvent`).
    The writes go out at the end of the step, or before a close."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending = []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for each request's headers: uvicorn's
    keep-alive time-out (`timeout_keep_alive`), counted from the connection's opening, or from
    the first byte of a later request (uvicorn's own timer covers the idle time before it)."""

    _header_deadline: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                self.timeout_keep_alive, self._headers_too_slow
            )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(cast(asyncio.Transport, coalescing))
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()


def serve(settings: Settings, reload: bool) -> None:
    """Run the API on the configured host and port until stopped (reloading on code changes)."""
    workers = 1 if reload else settings.api_worker_count
    # Read by each server process's settings: how many serve (live reload serves one), to
    # share out the validation workers.
    os.environ["API_WORKERS"] = str(workers)
    # The validation workers are not waited for at a stop (`BodyValidator.close`), so the
    # resource tracker (a process of its own, reading this variable) would warn at every
    # Ctrl-C about their semaphores, which the system frees with the processes anyway.
    os.environ["PYTHONWARNINGS"] = ",".join(
        filter(
            None,
            [
                os.environ.get("PYTHONWARNINGS"),
                "ignore::UserWarning:multiprocessing.resource_tracker",
            ],
        )
    )
    if workers == 1:
        _run(settings, reload, workers)
        return
    directory = _metrics_directory(settings)
    # Read by prometheus_client in each worker (spawned: they inherit the environment).
    os.environ[METRICS_DIRECTORY_VARIABLE] = str(directory)
    try:
        _run(settings, reload, workers)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _metrics_directory(settings: Settings) -> Path:
    """A new, empty directory for this API's metric files, named by its pid under
    `<lab_home>/run/api-metrics/`; those of APIs no longer running (killed) are removed."""
    root = settings.lab_home / "run" / "api-metrics"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if not (old.name.isdigit() and psutil.pid_exists(int(old.name))):
            shutil.rmtree(old, ignore_errors=True)
    # A killed API's folder can carry our pid (pids are reused): its counters are not ours.
    directory = root / str(os.getpid())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    return directory


def served_app() -> FastAPI:
    """The app of one server process (uvicorn's factory: each worker builds its own)."""
    from app.api.main import create_app

    setup_logging("api", get_settings())
    return create_app()


def _run(settings: Settings, reload: bool, workers: int) -> None:
    uvicorn.run(
        "app.api.server:served_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        reload=reload,
        reload_dirs=[str(ROOT / "app")],
        # Only its own code: an edit of the generator or the stream does not restart it.
        reload_excludes=[str(path) for path in unwatched_packages("api")],
        workers=workers,
        http=HeaderDeadlineProtocol,
        timeout_keep_alive=settings.api_header_timeout_seconds,
        limit_concurrency=settings.api_max_connections,
        timeout_graceful_shutdown=settings.api_graceful_shutdown_seconds,
        # One line per request would drown the lab's other logs; /metrics counts requests.
        access_log=False,
    )
