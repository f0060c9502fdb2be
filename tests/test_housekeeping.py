"""Housekeeping on real files: a log over the cap is cut while a process goes on appending to it,
and only what nothing wrote for the keep time goes (a file still held open stays)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from app.housekeeping import DAY_SECONDS, tidy_lab_logs, tidy_task_logs, trim_log

# Writes numbered lines, one write() each, to the file it opened with O_APPEND like the lab's
# process logs, until the file `stop` exists; then one last line.
WRITER = """
import os, sys
log, stop = sys.argv[1], sys.argv[2]
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
n = 0
while not os.path.exists(stop):
    os.write(fd, b"line %08d %s\\n" % (n, b"x" * 80))
    n += 1
os.write(fd, b"last %08d\\n" % n)
"""


def _numbers(data: bytes) -> list[int]:
    return [int(line.split()[1]) for line in data.splitlines()]


def _age(path: Path, days: float) -> None:
    then = time.time() - days * DAY_SECONDS
    os.utime(path, (then, then))


def test_a_log_over_the_cap_is_cut_while_a_process_appends_keeping_the_newest_lines(
    tmp_path: Path,
) -> None:
    log, stop = tmp_path / "api.log", tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(stop)])
    try:
        while not log.exists() or log.stat().st_size < 3_000_000:
            time.sleep(0.01)
        freed = trim_log(log, 1_000_000)
        time.sleep(0.2)  # the writer goes on after the cut
    finally:
        stop.touch()
        writer.wait(10)
    kept, live = (tmp_path / "api.log.1").read_bytes(), log.read_bytes()
    assert freed >= 2_000_000
    assert b"\0" not in kept and b"\0" not in live
    # The cap's worth, plus the lines appended while it was being copied.
    assert 900_000 < len(kept) < 1_500_000
    # Whole lines in order: the newest before the cut in .1, every one since in the live file.
    before, after = _numbers(kept), _numbers(live)
    assert before == list(range(before[0], before[-1] + 1))
    assert after == list(range(after[0], after[-1] + 1))
    assert before[-1] < after[0] and after[-1] > before[-1] + 100
    assert live.splitlines()[-1].startswith(b"last")


def test_logs_nothing_wrote_for_the_keep_time_go_unless_held_open(tmp_path: Path) -> None:
    names = ["kafka-spare-test-1.log", "kafka-spare-test-1.log.1", "held.log", "kafka.log"]
    for name in names:
        (tmp_path / name).write_bytes(b"a line\n" * 1000)
    for name in names[:3]:
        _age(tmp_path / name, 8)
    with (tmp_path / "held.log").open("ab"):
        tidied = tidy_lab_logs(tmp_path, 1_000_000, keep_days=7, now=time.time())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["held.log", "kafka.log"]
    assert (tidied.deleted, tidied.trimmed, tidied.freed_bytes) == (2, 0, 14_000)


def test_task_log_folders_older_than_the_keep_time_go(tmp_path: Path) -> None:
    runs = tmp_path / "dag_id=user_events_pipeline"
    folders = {
        "old run": runs / "run_id=scheduled__2026-11-01" / "task_id=drain_user_events",
        "recent run": runs / "run_id=scheduled__2026-11-09" / "task_id=drain_user_events",
        "old dag": tmp_path / "dag_id=gone" / "run_id=manual__2026-11-01" / "task_id=t",
        "old day": tmp_path / "dag_processor" / "2026-11-01" / "dags-folder",
        "recent day": tmp_path / "dag_processor" / "2026-11-09" / "dags-folder",
    }
    for name, folder in folders.items():
        folder.mkdir(parents=True)
        (folder / "attempt=1.log").write_bytes(b"x" * 100)
        if name.startswith("old"):
            for path in (folder / "attempt=1.log", folder, folder.parent):
                _age(path, 8)
    # A recent write anywhere in a run's folder keeps all of it.
    _age(folders["recent run"].parent, 8)

    tidied = tidy_task_logs(tmp_path, keep_days=7, now=time.time())

    assert (tidied.deleted, tidied.freed_bytes) == (3, 300)
    assert [name for name, folder in folders.items() if folder.exists()] == [
        "recent run",
        "recent day",
    ]
    assert not (tmp_path / "dag_id=gone").exists() and runs.exists()
