"""The Airflow runner keeps its components running (one that exits is started again), each
writing to a log file of its own rather than to `task up`'s terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed
import pytest

from app.airflow_runner import QUIET_SETTINGS, airflow_environment, summary_text
from app.core.config import ROOT, Settings

# Runs `run_components` with one component that exits at once and one that runs on.
SUPERVISOR = """
import sys
from pathlib import Path
from app.airflow_runner import run_components
python = sys.executable
run_components(
    {"PATH": ""},
    Path(sys.argv[1]),
    {
        "flaky": [python, "-c", "print('flaky ran', flush=True); raise SystemExit(3)"],
        "steady": [python, "-c", "import time; print('steady ran', flush=True); time.sleep(60)"],
    },
)
print("supervisor stopped", flush=True)
"""


def _supervise(script: str, logs: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, str(logs)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_an_exiting_component_is_started_again_with_backoff_and_sigterm_stops_all(
    tmp_path: Path,
) -> None:
    supervisor = _supervise(SUPERVISOR, tmp_path)
    lines: list[str] = []
    assert supervisor.stdout is not None
    # Exits at t=0, restarted at 1 s, exits, restarted at 1 + 2 s: three runs, two messages
    # before the third run's exit.
    deadline = time.monotonic() + 60
    while sum("flaky exited" in line for line in lines) < 3:
        assert time.monotonic() < deadline, "".join(lines)
        lines.append(supervisor.stdout.readline())
    supervisor.send_signal(signal.SIGTERM)
    rest, _ = supervisor.communicate(timeout=60)
    output = "".join(lines) + rest
    assert supervisor.returncode == 0, output
    flaky_log = tmp_path / "airflow-flaky.log"
    assert (
        f"flaky exited (code 3); starting it again in 1 s. The last lines of {flaky_log}" in output
    )
    assert "flaky exited (code 3); starting it again in 2 s" in output
    # Each exit shows the component's last lines; its output went to its file, not here.
    assert "\nflaky ran\n" in output
    assert flaky_log.read_text().splitlines().count("flaky ran") >= 3
    assert "\nsteady ran\n" not in output, output
    assert (tmp_path / "airflow-steady.log").read_text().splitlines().count("steady ran") == 1
    assert output.rstrip().endswith("supervisor stopped"), output


# A component that ignores SIGTERM and has a process of its own (as the scheduler has tasks).
STUBBORN = """
import sys
from pathlib import Path
from app.airflow_runner import run_components
python = sys.executable
child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
parent = (
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    f"task = subprocess.Popen([sys.executable, '-c', {child!r}]); "
    "print('task', task.pid, flush=True); time.sleep(60)"
)
run_components({"PATH": ""}, Path(sys.argv[1]), {"stubborn": [python, "-c", parent]})
print("supervisor stopped", flush=True)
"""


def test_a_component_that_does_not_stop_is_killed_with_its_processes_within_the_grace(
    tmp_path: Path,
) -> None:
    supervisor = _supervise(STUBBORN, tmp_path)
    log = tmp_path / "airflow-stubborn.log"
    deadline = time.monotonic() + 60

    def task_line() -> list[str]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if line.startswith("task ")]

    while not task_line():
        assert time.monotonic() < deadline, "the stubborn component did not start"
        time.sleep(0.1)
    task = int(task_line()[0].split()[1])
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


def test_a_task_summary_reads_as_one_line_of_its_nonzero_figures() -> None:
    drain = {"stored": 81, "batches": 1, "seconds": 0.27, "stopped": "caught up", "consumed": 81}
    assert summary_text({**drain, "duplicates": 0}) == (
        "consumed 81, stored 81, batches 1, stopped caught up"
    )
    assert summary_text({"events_counted": 0, "seconds": 0.1}) == "nothing to do"
    assert summary_text([[0, 1, 2]]) == "[[0, 1, 2]]"
    gap = {"partition": 0, "first": 0, "end": 150, "lost": 150, "reason": "retention"}
    assert summary_text({"consumed": 5, "lost_offsets": 150, "gaps": [gap]}) == (
        "consumed 5, lost_offsets 150, gaps 1"
    )


def test_airflow_loops_are_paced_for_the_lab_unless_the_environment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "1")
    settings = Settings(lab_home=tmp_path)
    environment = airflow_environment(settings, f"sqlite:///{tmp_path / 'airflow.db'}")
    assert environment["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == "1"
    assert environment["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] == "600"
    # Airflow reads each of them: a misspelt name would be silently ignored.
    check = subprocess.run(
        [
            sys.executable, "-c",
            "import sys; from airflow.configuration import conf\n"
            "for name in sys.argv[1:]:\n"
            "    _, section, key = name.lower().split('__')\n"
            "    print(conf.get(section, key))",
            *QUIET_SETTINGS,
        ],
        env={**os.environ, **environment}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == [environment[name] for name in QUIET_SETTINGS]
