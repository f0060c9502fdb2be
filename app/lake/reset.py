"""`task lake-reset`: remove the stream's checkpoints and the lake's folders together.

The checkpoint and the sink log must describe the same history (`app.lake.sink_log`); when they
do not, the stream refuses to start and points here. Removing both lets the stream start over
from the oldest order Kafka still holds. It runs only while no stream holds the writer lock.

    python -m app.lake.reset          # asks first (on a terminal)
    python -m app.lake.reset --yes    # no question (scripts)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from app.core.config import Settings, get_settings
from app.core.errors import LabError
from app.lake.queries import sinks
from app.lake.storage import location
from app.lake.writer_lock import writer_lock


def reset_targets(settings: Settings) -> list[str]:
    """What a reset removes: each sink's checkpoint, then each sink's folder."""
    return [sink.checkpoint for sink in sinks(settings)] + [sink.url for sink in sinks(settings)]


def reset_lake(settings: Settings) -> list[str]:
    """Remove the checkpoints and lake folders while holding the writer lock; say what went.
    Raises LabError (naming the holder) when a stream is running."""
    lock = writer_lock(settings)
    lock.acquire()
    removed = []
    try:
        for url in reset_targets(settings):
            fs, path = location(settings, url)
            files = fs.find(path)
            if files or fs.exists(path):
                fs.rm(path, recursive=True)
                removed.append(f"{url} ({len(files)} files)")
    finally:
        lock.release()
    return removed


def main(argv: list[str] | None = None, ask: Callable[[str], str] = input) -> int:
    parser = argparse.ArgumentParser(
        description="Remove the Spark stream's checkpoints and the lake's purchases and "
        "quarantine folders together (the stream then starts over from what Kafka holds)."
    )
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    args = parser.parse_args(argv)
    settings = get_settings()
    targets = "\n".join(f"  {url}" for url in reset_targets(settings))
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                f"lake-reset: this removes\n{targets}\nand asks first; no terminal to ask on. "
                "Run `task lake-reset -- --yes` to go ahead.",
                file=sys.stderr,
            )
            return 1
        answer = ask(f"This removes\n{targets}\nType yes to go ahead: ")
        if answer.strip().lower() != "yes":
            print("lake-reset: nothing removed.")
            return 1
    try:
        removed = reset_lake(settings)
    except LabError as exc:
        print(f"lake-reset: nothing removed. {exc}", file=sys.stderr)
        return 1
    if removed:
        print("lake-reset: removed\n" + "\n".join(f"  {line}" for line in removed))
    else:
        print("lake-reset: nothing to remove (no checkpoint, no lake folder)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
