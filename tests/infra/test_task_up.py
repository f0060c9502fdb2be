"""`task up` (and so `./scripts/lab start`) ends quietly, with status 0, after a clean Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed

from app.core.config import ROOT


def _sleepers(task: subprocess.Popen[str]) -> int:
    children = psutil.Process(task.pid).children(recursive=True)
    return sum(1 for child in children if child.name() == "sleep")


def test_a_clean_ctrl_c_of_task_up_is_not_reported_as_a_failure(tmp_path: Path) -> None:
    # The lab's Taskfile, with a Procfile of two quiet processes in place of the lab's.
    shutil.copy(ROOT / "Taskfile.yml", tmp_path / "Taskfile.yml")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "Procfile").write_text("one: exec sleep 60\ntwo: exec sleep 60\n")
    task = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "task"), "up"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # as a terminal's foreground group: Ctrl-C reaches all of it
    )
    deadline = time.monotonic() + 30
    while _sleepers(task) < 2:
        assert time.monotonic() < deadline and task.poll() is None, "honcho did not start both"
        time.sleep(0.2)
    os.killpg(task.pid, signal.SIGINT)
    output, _ = task.communicate(timeout=30)
    assert "one.1 stopped" in output and "two.1 stopped" in output, output
    assert "Failed to run task" not in output, output
    assert task.returncode == 0, output
