"""The Airflow runner keeps its components running: one that exits is started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil  # type: ignore[import-untyped]  # no stubs installed

from app.core.config import ROOT, Settings

# Runs `run_components` with one component that exits at once and one that runs on.
SUPERVISOR = """
import sys
from app.airflow_runner import run_components
python = sys.executable
run_components(
    {"PATH": ""},
    {
        "flaky": [python, "-c", "print('flaky ran', flush=True); raise SystemExit(3)"],
        "steady": [python, "-c", "import time; print('steady ran', flush=True); time.sleep(60)"],
    },
)
print("supervisor stopped", flush=True)
"""


def _supervise(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_an_exiting_component_is_started_again_with_backoff_and_sigterm_stops_all() -> None:
    supervisor = _supervise(SUPERVISOR)
    lines: list[str] = []
    assert supervisor.stdout is not None
    # Exits at t=0, restarted at 1 s, exits, restarted at 1 + 2 s: three runs, two messages.
    deadline = time.monotonic() + 60
    while sum("flaky ran" in line for line in lines) < 3:
        assert time.monotonic() < deadline, "".join(lines)
        lines.append(supervisor.stdout.readline())
    supervisor.send_signal(signal.SIGTERM)
    rest, _ = supervisor.communicate(timeout=60)
    output = "".join(lines) + rest
    assert supervisor.returncode == 0, output
    assert "flaky exited (code 3); starting it again in 1 s" in output
    assert "flaky exited (code 3); starting it again in 2 s" in output
    assert output.count("steady ran") == 1, output
    assert output.rstrip().endswith("supervisor stopped"), output


# A component that ignores SIGTERM and has a process of its own (as the scheduler has tasks).
STUBBORN = """
import sys
from app.airflow_runner import run_components
python = sys.executable
child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
parent = (
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    f"task = subprocess.Popen([sys.executable, '-c', {child!r}]); "
    "print('task', task.pid, flush=True); time.sleep(60)"
)
run_components({"PATH": ""}, {"stubborn": [python, "-c", parent]})
print("supervisor stopped", flush=True)
"""


def test_a_component_that_does_not_stop_is_killed_with_its_processes_within_the_grace() -> None:
    supervisor = _supervise(STUBBORN)
    assert supervisor.stdout is not None
    first = supervisor.stdout.readline()
    assert first.startswith("task "), first
    task = int(first.split()[1])
    supervisor.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    rest, _ = supervisor.communicate(timeout=60)
    took = time.monotonic() - signalled
    assert supervisor.returncode == 0, rest
    assert took < 5, f"{took:.1f} s: honcho would have killed the runner first"
    assert "stubborn did not stop within 3.5 s: killed, with the processes it ran" in rest
    assert rest.rstrip().endswith("supervisor stopped"), rest
    assert not psutil.pid_exists(task) or psutil.Process(task).status() == psutil.STATUS_ZOMBIE


def test_task_airflow_talks_to_the_labs_airflow(isolated_settings: Settings) -> None:
    """`task airflow -- ...` runs the airflow command with the lab's home and DAGs folder, not
    `~/airflow`."""
    result = subprocess.run(
        [sys.executable, "-m", "app.airflow_cli", "config", "get-value", "core", "dags_folder"],
        env={**os.environ, **isolated_settings.as_environment()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(ROOT / "dags")
