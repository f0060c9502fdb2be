"""`--processes N`: one run split over N generator processes, for rates one process cannot send.

A process tops out near one core (Faker, JSON, HTTP). With N of them, each second's users are
shared out (the first `users % N` processes take one more), and process `i` builds its crowd
from `derived_seed(seed, i)`: one seed and one N send the same records every time. Each process
keeps its own count and appends the records the API acknowledged to a file of its own; when all
have stopped, the parent appends those files to the record file in process order and prints one
summary of every process's records. Ctrl-C, or a SIGTERM to the parent, stops them all.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

from app.core.process import when_parent_exits
from app.generator.runner import (
    Outcome,
    Progress,
    RunOptions,
    StatusPrinter,
    run_until_signal,
    summary_lines,
)
from app.generator.sender import Tally


def derived_seed(seed: int | None, index: int) -> int | None:
    """Process `index`'s seed in a run seeded with `seed`; None (random) stays None."""
    return None if seed is None else random.Random(f"{seed}/{index}").getrandbits(63)


def shares(users: int, processes: int) -> list[int]:
    """Each process's users per second: `users` split as evenly as whole users go."""
    return [users // processes + (index < users % processes) for index in range(processes)]


@dataclass(frozen=True)
class Part:
    """What one process runs."""

    index: int
    processes: int
    options: RunOptions
    seed: int | None
    record_file: Path | None

    @property
    def name(self) -> str:
        return f"generator {self.index + 1}/{self.processes}"


def part_file(record_file: Path, index: int) -> Path:
    return record_file.with_name(f"{record_file.name}.part{index}")


def _run_part(part: Part, results: Connection) -> None:
    """In a child process: run the part, send back its outcome."""
    printer = StatusPrinter(open(os.devnull, "w"), sys.stderr, part.name)  # noqa: SIM115
    # The parent's Ctrl-C may reach the whole process group: a second stop signal changes nothing.
    when_parent_exits(lambda: os.kill(os.getpid(), signal.SIGTERM))
    outcome = run_until_signal(part.options, part.seed, printer, part.record_file, summary=False)
    results.send(outcome)


def run_processes(
    options: RunOptions,
    seed: int | None,
    processes: int,
    record_file: Path | None,
    printer: StatusPrinter,
) -> Outcome:
    """Run `processes` generator processes to their end; their outcomes summed, summarised."""
    context = multiprocessing.get_context("spawn")
    parts = [
        Part(
            index,
            processes,
            replace(options, users_per_second=users),
            derived_seed(seed, index),
            part_file(record_file, index) if record_file else None,
        )
        for index, users in enumerate(shares(options.users_per_second, processes))
    ]
    if record_file is not None:
        # Parts a killed run left behind hold records that were acknowledged: merge them first.
        left = sorted(
            record_file.parent.glob(f"{record_file.name}.part*"),
            key=lambda part: (len(part.name), part.name),
        )
        if left:
            printer.message(f"merged the records a run cut short left in {record_file}.part*")
            _merge(record_file, left)
    started = time.monotonic()
    children = []
    for part in parts:
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(target=_run_part, args=(part, sending), name=part.name)
        child.start()
        sending.close()
        children.append((part, child, receiving))

    def stop(_signum: int, _frame: object) -> None:
        for _, child, _ in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    tally, progress, interrupted = Tally(), Progress(started=started), False
    for part, child, receiving in children:
        try:
            outcome: Outcome = receiving.recv()
        except EOFError:
            printer.message(f"{part.name} ended without a summary (exit code {child.exitcode})")
            interrupted = True
        else:
            tally += outcome.tally
            progress.ticks = max(progress.ticks, outcome.progress.ticks)
            progress.overruns = max(progress.overruns, outcome.progress.overruns)
            interrupted |= outcome.interrupted
        child.join()
    if record_file is not None:
        _merge(record_file, [part.record_file for part in parts if part.record_file])
    printer.summary(summary_lines(tally, progress, time.monotonic(), interrupted))
    return Outcome(tally, progress, interrupted)


def _merge(record_file: Path, parts: list[Path]) -> None:
    """Append the processes' record files to `record_file`, in process order, then drop them."""
    with record_file.open("ab") as merged:
        for part in parts:
            if part.exists():
                with part.open("rb") as records:
                    shutil.copyfileobj(records, merged)
                part.unlink()
