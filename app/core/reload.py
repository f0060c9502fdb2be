"""Live reload for the lab's processes: run one as a child and start it again when its code changes.

`python -m app.generator --reload`, `python -m app.lake --reload` and `python -m app.console
--reload` (the Procfile's lines) run themselves under `run_reloading`: it starts the same
command without `--reload` as a child, watches the Python files the process is made of, and on a
change stops the child as honcho would (SIGTERM, then SIGKILL after `STOP_SECONDS`) and starts it
again. The Spark stream resumes from its checkpoint, the generator with a new crowd; nothing
acknowledged is lost. A child that exits by itself (a syntax error, say) is not started again
until the next change, as uvicorn's reloader does for the API; one that exits with
`EXIT_TRY_AGAIN` (a service it needs does not answer) is started again after 2, 4, 8... up to
`MAX_BACKOFF_SECONDS`.

SIGTERM or SIGINT to the watcher (honcho's Ctrl-C, which signals the whole process group) stops
the child the same way and ends with the child's exit status.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from watchfiles import Change, PythonFilter, watch

from app.core.config import ROOT
from app.core.errors import EXIT_TRY_AGAIN
from app.core.process import kill_tree

# Under honcho's 5 s grace: the stream's own stop deadline is 3.5 s.
STOP_SECONDS = 4.5
MAX_BACKOFF_SECONDS = 30
# A child that ran this long before asking to be started again starts over at the shortest wait.
HEALTHY_SECONDS = 60
# What each process is made of (the packages it imports), besides what they all share: the
# record contract and the plumbing. A change elsewhere restarts none of them.
SOURCES = {
    "api": ("app/api",),
    "generator": ("app/generator",),
    "spark": ("app/lake",),
    "console": ("app/console", "app/lake", "app/pipeline", "app/analysis"),
}
COMMON = ("app/schemas.py", "app/core")


def unwatched_packages(name: str) -> list[Path]:
    """The packages under app/ that process `name` is not made of (uvicorn's excludes)."""
    watched = {ROOT / source for source in (*SOURCES[name], *COMMON)}
    return sorted(
        path for path in (ROOT / "app").iterdir() if path.is_dir() and path not in watched
    )


def _start(command: list[str]) -> subprocess.Popen[bytes]:
    # A session of its own, so honcho's signal to our group reaches the child once, from us (a
    # second SIGTERM would cut the stream's clean stop short); and SIGTERM when we die, even
    # SIGKILLed, so no child outlives its watcher (Linux; elsewhere the stop path does it).
    return subprocess.Popen(command, cwd=ROOT, start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(child: subprocess.Popen[bytes]) -> int:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            kill_tree(child.pid)
            child.wait()
    return child.returncode


def _changed(changes: set[tuple[Change, str]]) -> str:
    names = sorted({str(Path(path).relative_to(ROOT)) for _, path in changes})
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def run_reloading(name: str, module: str, argv: Sequence[str]) -> int:
    """Run `python -m module argv` until SIGTERM/SIGINT, again after every change to the files
    process `name` is made of (`SOURCES`). Returns the last child's exit status."""
    command = [sys.executable, "-m", module, *argv]
    sources = SOURCES[name]
    paths = [ROOT / source for source in (*sources, *COMMON)]
    stopping = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    print(f"{name}: live reload on: a change under {', '.join(sources)} restarts it", flush=True)
    child = _start(command)
    started = time.monotonic()
    said_exit = False
    retries = 0
    retry_at: float | None = None
    for changes in watch(
        *paths,
        watch_filter=PythonFilter(),
        stop_event=stopping,
        raise_interrupt=False,
        rust_timeout=1000,
        yield_on_timeout=True,
    ):
        if changes:
            print(f"{name}: {_changed(changes)} changed: restarting", flush=True)
        elif retry_at is not None and time.monotonic() >= retry_at:
            print(f"{name}: starting it again", flush=True)
        else:
            if child.poll() == EXIT_TRY_AGAIN and retry_at is None:
                retries = 0 if time.monotonic() - started > HEALTHY_SECONDS else retries
                wait = min(2 ** (retries + 1), MAX_BACKOFF_SECONDS)
                retries += 1
                retry_at = time.monotonic() + wait
                print(f"{name}: a service it needs does not answer; again in {wait} s", flush=True)
            elif child.poll() not in (None, EXIT_TRY_AGAIN) and not said_exit:
                said_exit = True
                print(
                    f"{name}: exited with status {child.returncode}; waiting for a change "
                    "to start it again (or Ctrl-C)",
                    flush=True,
                )
            continue
        _stop(child)
        child = _start(command)
        started = time.monotonic()
        said_exit = False
        retry_at = None
    code = _stop(child)
    # Stopped by our SIGTERM, as asked: a clean stop (honcho prints `rc=0`).
    return 0 if code == -signal.SIGTERM else code


def reload_argv(argv: Sequence[str] | None) -> list[str]:
    """The command line without `--reload`: what the watcher runs as its child."""
    return [arg for arg in (sys.argv[1:] if argv is None else argv) if arg != "--reload"]
