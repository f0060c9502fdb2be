"""Live reload's watcher (`app/core/reload.py`): a child that asks to be started again (a service
away) is, with backoff; one that fails otherwise waits for a change; SIGTERM stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.core.config import ROOT

# The watcher of the generator's files, running a child that records each start and exits with
# the statuses listed in a file, one per start, then runs on.
WATCHER = """
import sys
from app.core.reload import run_reloading
sys.exit(run_reloading("generator", "tests.infra.reload_child", [sys.argv[1]]))
"""


def _watch(tmp_path: Path, statuses: list[int]) -> subprocess.Popen[str]:
    (tmp_path / "statuses").write_text("".join(f"{status}\n" for status in statuses))
    return subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _starts(tmp_path: Path) -> int:
    path = tmp_path / "starts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for_starts(tmp_path: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _starts(tmp_path) < count:
        assert time.monotonic() < deadline, f"{_starts(tmp_path)} starts, not {count}"
        time.sleep(0.1)


def test_a_child_asking_to_try_again_is_started_again_with_backoff(tmp_path: Path) -> None:
    watcher = _watch(tmp_path, [75, 75])
    _wait_for_starts(tmp_path, 3, timeout=30)  # after 2 s, then 4 s
    watcher.send_signal(signal.SIGTERM)
    output, _ = watcher.communicate(timeout=30)
    assert "generator: a service it needs does not answer; again in 2 s" in output, output
    assert "generator: a service it needs does not answer; again in 4 s" in output, output
    assert watcher.returncode == 0, output
    assert _starts(tmp_path) == 3


def test_a_child_that_fails_otherwise_waits_for_a_change(tmp_path: Path) -> None:
    watcher = _watch(tmp_path, [1])
    _wait_for_starts(tmp_path, 1, timeout=30)
    time.sleep(3)
    watcher.send_signal(signal.SIGTERM)
    output, _ = watcher.communicate(timeout=30)
    assert "generator: exited with status 1; waiting for a change" in output, output
    assert _starts(tmp_path) == 1, output
    assert watcher.returncode == 1
