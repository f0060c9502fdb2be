"""The generator's loop: one crowd per second, a live status line, a summary at the end.

A tick builds the second's sessions and sends them; a tick starts every second, whether or not
the earlier ones are done, and all share the `--concurrency` requests in flight. A tick's
sessions are chains of requests (a session's events go in order), so its last requests finish
well after its first: were each tick to wait for the previous one, the rate offered would fall
with the API's latency, not its throughput (measured: 2,544 of 2,999 events/s offered, with
half the ticks late, while the machine still had CPU to spare). At most `MAX_OPEN_TICKS` ticks
send at once; a tick that must wait for one of them to finish starts late and is reported as an
overrun (API slow or down, or the crowd too big for the concurrency), and the cadence goes on
from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import uvloop

from app.generator.crowd import Crowd, Session
from app.generator.http_client import HttpClient
from app.generator.sender import Sender, Tally

TICK_SECONDS = 1.0
# Ticks sending at once: a crowd rides out half a minute of a slow API (a DAG run and a Spark
# batch taking the CPU together) before it offers less, as users arriving on a site do not
# wait for each other; about as long as a request is retried (`--retry-seconds`, 30 by
# default). Bounds what a slow or absent API leaves waiting in memory. With 10, the 10-minute
# soak at 3,000 events/s started 12-50 ticks late, by 2-8 % of its time.
MAX_OPEN_TICKS = 30
# A tick started later than this after its due time counts as an overrun.
LATE_SECONDS = 0.1


@dataclass(frozen=True)
class RunOptions:
    url: str
    users_per_second: int
    concurrency: int
    retry_seconds: float
    request_timeout: float
    max_batch: int
    ticks: int | None = None  # stop after this many ticks...
    duration: float | None = None  # ...or after this many seconds; neither: run until stopped


@dataclass
class Progress:
    """What the status line and the summary show."""

    ticks: int = 0
    overruns: int = 0
    started: float = 0.0
    sent_at_last_status: int = 0
    last_status: float = 0.0


@dataclass
class Outcome:
    """A finished run: every record's fate, the ticks, and whether it was stopped early."""

    tally: Tally
    progress: Progress
    interrupted: bool


# Ticks (seconds) between two status lines when the output is not a terminal.
LOG_EVERY_TICKS = 60


class StatusPrinter:
    """Status line and messages: one rewritten line on a terminal, a line a minute in a log
    (`task up`'s terminal is shared with every other process).
    `name` prefixes messages (`generator`, or `generator 2/4` for one of several processes)."""

    def __init__(self, out: IO[str], err: IO[str], name: str = "generator") -> None:
        self.out = out
        self.err = err
        self.name = name
        self.interactive = out.isatty()
        self._line_open = False

    def _close_line(self) -> None:
        if self._line_open:
            self.out.write("\n")
            self.out.flush()
            self._line_open = False

    def message(self, text: str) -> None:
        self._close_line()
        self.err.write(f"{self.name}: {text}\n")
        self.err.flush()

    def status(self, text: str, ticks: int) -> None:
        if self.interactive:
            self.out.write(f"\r{text}\x1b[K")
            self._line_open = True
        elif ticks % LOG_EVERY_TICKS == 0:
            self.out.write(f"{text}\n")
        self.out.flush()

    def summary(self, lines: list[str]) -> None:
        self._close_line()
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()


def status_line(tally: Tally, progress: Progress, now: float) -> str:
    elapsed = now - progress.last_status
    rate = (tally.sent - progress.sent_at_last_status) / elapsed if elapsed > 0 else 0.0
    return (
        f"t={now - progress.started:5.0f}s  sent {tally.sent} ({rate:.0f}/s)  "
        f"accepted {tally.accepted}  rejected {tally.rejected}  failed {tally.failed}  "
        f"retries {tally.retries}  overruns {progress.overruns}"
    )


def summary_lines(tally: Tally, progress: Progress, now: float, interrupted: bool) -> list[str]:
    lines = [
        f"generator: {'interrupted' if interrupted else 'finished'} after {progress.ticks} ticks "
        f"in {now - progress.started:.1f} s ({progress.overruns} overran the 1 s cadence)",
        f"  records generated {tally.generated}: accepted {tally.accepted}, "
        f"rejected {tally.rejected}, failed {tally.failed}"
        + (
            f", interrupted mid-request {tally.in_flight} (may or may not be stored), "
            f"never sent {tally.unsent}"
            if interrupted
            else ""
        ),
        f"  requests retried: {tally.retries}",
    ]
    lines += [f"  {count} request(s): {problem}" for problem, count in tally.problems.items()]
    return lines


async def run(
    options: RunOptions,
    crowd: Crowd,
    printer: StatusPrinter,
    record_file: IO[bytes] | None = None,
    summary: bool = True,
) -> Outcome:
    """Generate and send ticks until the count or duration is reached or the task is cancelled;
    print the summary unless `summary` is false (one of several processes: the parent sums)."""
    progress = Progress(started=time.monotonic())
    progress.last_status = progress.started
    interrupted = False
    client = HttpClient(options.url, timeout=options.request_timeout)
    try:
        sender = Sender(
            client,
            concurrency=options.concurrency,
            max_batch=options.max_batch,
            retry_seconds=options.retry_seconds,
            report=printer.message,
            record_file=record_file,
        )
        try:
            await _send_ticks(options, crowd, printer, sender, progress)
        except asyncio.CancelledError:
            interrupted = True
        finally:
            if summary:
                printer.summary(
                    summary_lines(sender.tally, progress, time.monotonic(), interrupted)
                )
    finally:
        client.close()
    return Outcome(sender.tally, progress, interrupted)


async def _send_ticks(
    options: RunOptions, crowd: Crowd, printer: StatusPrinter, sender: Sender, progress: Progress
) -> None:
    """Start a tick every second (see the module docstring) until the run is done; return once
    every tick started has been sent."""
    open_ticks = asyncio.Semaphore(MAX_OPEN_TICKS)

    async def send(sessions: list[Session]) -> None:
        try:
            await sender.send_tick(sessions)
        finally:
            open_ticks.release()

    due = time.monotonic()
    async with asyncio.TaskGroup() as ticks:
        while not _done(options, progress):
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if _done(options, progress):  # a duration may run out while waiting
                break
            await open_ticks.acquire()
            now = time.monotonic()
            late = now - due
            if late > LATE_SECONDS:
                progress.overruns += 1
                due = now  # the cadence goes on from here: no burst to catch up
                printer.message(
                    f"tick {progress.ticks + 1} started {late:.2f} s late: the {MAX_OPEN_TICKS} "
                    "ticks before it were still sending. The API is slow or the crowd too big "
                    "(lower --users-per-second or raise --concurrency)"
                )
            ticks.create_task(send(crowd.tick(datetime.now(UTC), options.users_per_second)))
            progress.ticks += 1
            due += TICK_SECONDS
            printer.status(status_line(sender.tally, progress, now), progress.ticks)
            progress.sent_at_last_status = sender.tally.sent
            progress.last_status = now


def run_until_signal(
    options: RunOptions,
    seed: int | None,
    printer: StatusPrinter,
    record_path: Path | None,
    summary: bool = True,
) -> Outcome:
    """`run` in an event loop of its own until it ends, Ctrl-C or SIGTERM (honcho stopping the
    lab), appending the acknowledged records to `record_path` if given."""
    with contextlib.ExitStack() as stack:
        record_file = stack.enter_context(record_path.open("ab")) if record_path else None
        # uvloop (the API server's loop too): about 15 % less CPU per event than asyncio's.
        return uvloop.run(_until_signal(options, Crowd(seed), printer, record_file, summary))


async def _until_signal(
    options: RunOptions,
    crowd: Crowd,
    printer: StatusPrinter,
    record_file: IO[bytes] | None,
    summary: bool,
) -> Outcome:
    task = asyncio.create_task(run(options, crowd, printer, record_file, summary))
    stopping = False

    def stop() -> None:
        # Once: Ctrl-C may reach a process twice (its group, and a parent passing it on).
        nonlocal stopping
        if not stopping:
            stopping = True
            task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    return await task


def _done(options: RunOptions, progress: Progress) -> bool:
    if options.ticks is not None and progress.ticks >= options.ticks:
        return True
    return options.duration is not None and time.monotonic() - progress.started >= options.duration
