"""The generator's cadence: a tick starts every second while earlier ticks are still sending.

A tick's sessions are chains of requests, so with a slow API a tick lasts several seconds. The
generator must keep offering its rate all the same (up to `MAX_OPEN_TICKS` ticks at once), and
say so when it cannot. The API here is a small HTTP server in the test that answers every
request after `DELAY` seconds: what is tested is when the generator sends, not what is stored
(`test_send.py` runs it against the real API and Kafka).
"""

from __future__ import annotations

import asyncio
import io
import time

import pytest

from app.generator import runner
from app.generator.crowd import Crowd
from app.generator.runner import RunOptions, StatusPrinter

DELAY = 0.8


async def _slow_api(arrivals: list[float]) -> asyncio.Server:
    """An HTTP/1.1 server on a free port answering `{}` to each request DELAY s after it came."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrivals.append(time.monotonic())
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                await asyncio.sleep(DELAY)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()  # the client is done, or the test is: nothing more to answer

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def _run(ticks: int) -> tuple[runner.Outcome, list[float], str]:
    arrivals: list[float] = []
    server = await _slow_api(arrivals)
    port = server.sockets[0].getsockname()[1]
    errors = io.StringIO()
    options = RunOptions(
        url=f"http://127.0.0.1:{port}",
        users_per_second=3,
        concurrency=64,
        retry_seconds=5,
        request_timeout=10,
        max_batch=100,
        ticks=ticks,
    )
    started = time.monotonic()
    async with server:
        outcome = await runner.run(options, Crowd(7), StatusPrinter(io.StringIO(), errors))
    return outcome, [at - started for at in arrivals], errors.getvalue()


def test_ticks_start_on_the_second_while_earlier_ones_still_send() -> None:
    outcome, arrivals, errors = asyncio.run(_run(ticks=3))
    assert outcome.tally.accepted == outcome.tally.generated > 0
    # A session's next event goes DELAY s after the previous one: only a new tick's first
    # requests arrive between 0.9 and 1.5 s, or between 1.9 and 2.5 s.
    assert any(0.9 <= at < 1.5 for at in arrivals), arrivals
    assert any(1.9 <= at < 2.5 for at in arrivals), arrivals
    assert outcome.progress.overruns == 0, errors


def test_a_tick_waiting_for_the_open_ones_is_reported_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "MAX_OPEN_TICKS", 1)
    outcome, arrivals, errors = asyncio.run(_run(ticks=2))
    assert outcome.tally.accepted == outcome.tally.generated > 0
    assert outcome.progress.overruns == 1
    assert "tick 2 started" in errors and "s late: the 1 ticks before it" in errors
    # One tick at a time: the second tick's first request waits for the first tick's end.
    assert not any(0.9 <= at < 1.5 for at in arrivals), arrivals
