"""`python -m app.generator`: send a new crowd of fake shoppers to the ingest API every second.

Defaults come from the lab's settings (GENERATOR_* and API_* in .env); options override them.
Stops after --count ticks or --duration seconds, or on Ctrl-C, and prints a summary. Exits 0
when every generated record was accepted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.core.config import get_settings
from app.core.logs import setup_logging
from app.core.reload import reload_argv, run_reloading
from app.generator.processes import run_processes
from app.generator.runner import RunOptions, StatusPrinter, run_until_signal


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m app.generator", description=__doc__)
    parser.add_argument(
        "--users-per-second",
        type=int,
        default=settings.generator_users_per_second,
        help="sessions started each second (default %(default)s)",
    )
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--count", type=int, help="stop after this many one-second ticks")
    stop.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--url", default=settings.api_url, help="ingest API base URL (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, help="random seed: the same seed sends the same data")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=settings.generator_concurrency,
        help="requests in flight at most, per process (default %(default)s)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=settings.generator_processes,
        help="generator processes sharing the users, each with its own seed and connections "
        "(default %(default)s; one uses a core for about 10,000 events/s)",
    )
    parser.add_argument(
        "--retry-seconds",
        type=float,
        default=settings.generator_retry_seconds,
        help="how long a request is retried on 503 or connection errors (default %(default)s)",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="restart on changes to its code (the Procfile's development mode)",
    )
    parser.add_argument(
        "--record-file",
        type=Path,
        help="append every record the API acknowledged to this JSON-lines file",
    )
    args = parser.parse_args(argv)
    for name in ("users_per_second", "concurrency", "count", "processes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.users_per_second < args.processes:
        parser.error("--users-per-second must be at least --processes (each sends some)")
    return args


def main(argv: list[str] | None = None) -> int:
    setup_logging("generator", get_settings())
    args = parse_args(argv)
    if args.reload:
        return run_reloading("generator", "app.generator", reload_argv(argv))
    settings = get_settings()
    options = RunOptions(
        url=args.url,
        users_per_second=args.users_per_second,
        concurrency=args.concurrency,
        retry_seconds=args.retry_seconds,
        # Longer than the API's own bound, so the API's 503 arrives before our timeout.
        request_timeout=settings.api_produce_timeout_seconds + 5,
        max_batch=settings.api_max_batch,
        ticks=args.count,
        duration=args.duration,
    )
    printer = StatusPrinter(sys.stdout, sys.stderr)
    if args.processes == 1:
        outcome = run_until_signal(options, args.seed, printer, args.record_file)
    else:
        outcome = run_processes(options, args.seed, args.processes, args.record_file, printer)
    return 0 if outcome.tally.accepted == outcome.tally.generated else 1


if __name__ == "__main__":
    sys.exit(main())
