"""Live reload under honcho, as the design card promises: edit the generator, it restarts.

Runs `honcho start api generator` with the repository's Procfile from a copy of the code (so
the edit touches no file of the repository), against the lab's Kafka on this module's topics.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from app.core.config import ROOT, Settings
from tests.support import free_port, read_topic, stop_group

HONCHO = Path(sys.executable).parent / "honcho"


def _wait(check: Callable[[], bool], what: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} in {timeout:g} s:\n{log.read_text()}"
        time.sleep(0.5)


def _generator_children(honcho: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The generator processes the watcher runs (command line without `--reload`)."""
    found = []
    for process in psutil.Process(honcho.pid).children(recursive=True):
        try:
            command = process.cmdline()
        except psutil.Error:
            continue
        if "app.generator" in command and "--reload" not in command:
            found.append(process)
    return found


def test_editing_a_generator_file_restarts_the_generator(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    copy = tmp_path / "lab"
    shutil.copytree(ROOT / "app", copy / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Procfile", copy / "Procfile")
    (copy / ".venv").symlink_to(ROOT / ".venv")
    settings = isolated_settings.model_copy(
        update={"api_port": free_port(), "generator_users_per_second": 2}
    )
    env_file = tmp_path / "empty.env"  # the settings come from the environment below
    env_file.touch()
    log = tmp_path / "honcho.log"
    with log.open("wb") as out:
        honcho = subprocess.Popen(
            [HONCHO, "start", "-e", str(env_file), "api", "generator"],
            cwd=copy,
            env={**os.environ, **settings.as_environment()},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(lambda: len(_generator_children(honcho)) == 1, "generator", 60, log)
        (first,) = _generator_children(honcho)
        _wait(lambda: bool(read_topic(settings, settings.topic_user_events)), "events", 60, log)

        crowd = copy / "app" / "generator" / "crowd.py"
        crowd.write_text(crowd.read_text() + "\n# edited by the live-reload test\n")

        def restarted() -> bool:
            children = _generator_children(honcho)
            return len(children) == 1 and children[0].pid != first.pid

        _wait(restarted, "restarted generator", 60, log)
        assert not first.is_running(), "the old generator is still running"
        sent_before = len(read_topic(settings, settings.topic_user_events))
        _wait(
            lambda: len(read_topic(settings, settings.topic_user_events)) > sent_before,
            "events from the restarted generator",
            60,
            log,
        )
        output = log.read_text()
        assert "app/generator/crowd.py changed: restarting" in output, output
        # Only the process made of that code: the API (uvicorn's reloader) stays as it was.
        assert "Reloading" not in output, output
        assert honcho.poll() is None, output
    finally:
        stop_group(honcho, signal.SIGINT, timeout=30)
    output = log.read_text()
    assert "Traceback" not in output, output
