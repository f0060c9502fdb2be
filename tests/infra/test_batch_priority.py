"""The batch side runs at LAB_BATCH_NICE, the ingest path at 0: FerretDB as `infra-up` starts it,
Airflow's components (and what they start), and the Spark stream with its JVM. On two cores
shared by the whole lab, the API then gets the CPU first (docs/performance.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed
import pytest

from app.core.config import ROOT, Settings
from app.infra.mode import resolve_mode
from app.infra.mongo import Mongo


def _run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_the_lab_s_ferretdb_runs_at_the_batch_nice_value(lab_services: Settings) -> None:
    mongo = Mongo(lab_services)
    if resolve_mode(lab_services) != "local":
        pytest.skip("Docker runs the containers; their priority is Docker's")
    pid = mongo.pid()
    assert pid is not None
    assert lab_services.lab_batch_nice > 0
    process = psutil.Process(pid)
    # Every thread: Go's runtime threads inherit the value `nice` gave the process.
    assert {psutil.Process(t.id).nice() for t in process.threads()} == {lab_services.lab_batch_nice}


def test_lower_priority_lowers_and_never_raises_back() -> None:
    script = (
        "import os; from app.core.process import lower_priority\n"
        "lower_priority(7); a = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "lower_priority(3); b = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "lower_priority(0); c = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "print(a, b, c)"
    )
    assert _run(script).stdout.split() == ["7", "7", "7"]


def test_airflow_s_components_and_their_children_run_at_the_given_nice_value(
    tmp_path: Path,
) -> None:
    # One component that starts a process of its own (as the scheduler starts tasks).
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from app.airflow_runner import run_components\n"
        "python = sys.executable\n"
        "child = 'import subprocess, sys, time; "
        'subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]); '
        "time.sleep(60)'\n"
        "run_components({'PATH': os.environ['PATH']}, Path(sys.argv[1]), "
        "{'steady': [python, '-c', child]}, nice=6)\n"
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 30
        while len(psutil.Process(supervisor.pid).children(recursive=True)) < 2:
            assert time.monotonic() < deadline, "the component and its child did not start"
            time.sleep(0.1)
        processes = psutil.Process(supervisor.pid).children(recursive=True)
        assert psutil.Process(supervisor.pid).nice() == 0
        assert [process.nice() for process in processes] == [6, 6]
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=30)


def test_the_stream_runs_at_the_batch_nice_value() -> None:
    # `python -m app.lake` with the stream itself replaced: what priority would it run at?
    script = (
        "import os, sys\n"
        "import app.lake.stream as stream\n"
        "stream.run_stream = lambda *a, **k: print(os.getpriority(os.PRIO_PROCESS, 0))\n"
        "from app.lake.__main__ import main\n"
        "sys.exit(main([]))\n"
    )
    assert _run(script, LAB_BATCH_NICE="9").stdout.split()[-1] == "9"
