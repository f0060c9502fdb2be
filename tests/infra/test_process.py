"""Pid files: the lab signals a process only while it is the very one it started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from app.core.process import ProcessFiles, running_pid, start_process, stop_process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _started(files: ProcessFiles) -> subprocess.Popen[bytes]:
    process = start_process(files, SLEEPER)
    assert running_pid(files) == process.pid
    return process


def test_a_pid_file_is_trusted_while_its_process_runs(tmp_path: Path) -> None:
    files = ProcessFiles("sleeper", tmp_path)
    process = _started(files)
    assert stop_process(files, timeout=10)
    assert process.wait(10) is not None
    assert running_pid(files) is None
    assert not files.pid.exists()


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    """A pid file naming a live process that started at another time (the pid was reused)."""
    files = ProcessFiles("sleeper", tmp_path)
    bystander = subprocess.Popen(SLEEPER)
    try:
        started = psutil.Process(bystander.pid).create_time()
        files.pid.parent.mkdir(parents=True)
        files.pid.write_text(f"{bystander.pid}\n{started - 3600!r}\n")
        assert running_pid(files) is None
        assert stop_process(files, timeout=1) is False
        assert bystander.poll() is None, "the bystander was signalled"
    finally:
        bystander.kill()
        bystander.wait(10)


def test_a_pid_file_without_a_start_time_is_not_trusted(tmp_path: Path) -> None:
    files = ProcessFiles("sleeper", tmp_path)
    bystander = subprocess.Popen(SLEEPER)
    try:
        files.pid.parent.mkdir(parents=True)
        files.pid.write_text(f"{bystander.pid}\n")
        assert running_pid(files) is None
        assert stop_process(files, timeout=1) is False
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(10)


def test_a_pid_file_of_an_older_lab_is_trusted_only_with_its_command(tmp_path: Path) -> None:
    """Older labs wrote the pid and a word of the command line; an upgrade must still find (and
    be able to stop) the services they started, and nothing else."""
    files = ProcessFiles("sleeper", tmp_path)
    service = subprocess.Popen(SLEEPER)
    try:
        files.pid.parent.mkdir(parents=True)
        files.pid.write_text(f"{service.pid}\nsomething-else\n")
        assert running_pid(files) is None
        files.pid.write_text(f"{service.pid}\n{sys.executable}\n")
        assert running_pid(files) == service.pid
        assert stop_process(files, timeout=10)
        assert service.wait(10) is not None
    finally:
        service.kill()
        service.wait(10)
