"""`python -m app.housekeeping` (`task tidy`, DAG `lab_housekeeping` daily): a lab left running
for weeks keeps its logs and Airflow's metadata bounded.

- `tidy_lab_logs`: each `<lab home>/logs/*.log` over `LAB_LOG_MAX_MB` is cut, its newest part
  kept in `<name>.log.1` (one generation); log files nothing has written for
  `LAB_LOG_KEEP_DAYS` (the spare Kafka nodes' logs tests leave, say) are deleted, unless a
  process still holds them open.
- `tidy_task_logs`: Airflow's task-log folders (`dag_id=.../run_id=...`, one per DAG run: 720 a
  day for the pipeline) and the DAG processor's day folders, once older than `LAB_LOG_KEEP_DAYS`.
- `clean_airflow_metadata`: `airflow db clean` of the rows older than that (DAG runs, task
  instances, XComs, the audit log...), with the lab's Airflow environment.

The Spark driver's `spark.log` rolls itself at the same size (`app/lake/log4j2.properties`).
Each step returns a `Tidied`: what it freed, printable on one line; `tidy_lab` runs them all.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed

from app.airflow_runner import AIRFLOW, airflow_environment, airflow_home, metadata_database
from app.core.config import ROOT, Settings, get_settings
from app.core.errors import LabError
from app.core.logs import setup_logging

MB = 1024 * 1024
DAY_SECONDS = 86_400
# `airflow db clean` prints "Checking table <name>" and then "Found <n> rows meeting deletion
# criteria." for each table it cleans.
CHECKING = re.compile(r"^Checking table (\w+)", re.MULTILINE)
FOUND = re.compile(r"^Found (\d+) rows meeting deletion criteria", re.MULTILINE)


@dataclass
class Tidied:
    """What one housekeeping step did."""

    step: str
    trimmed: int = 0  # log files cut to their newest part
    deleted: int = 0  # files or folders removed
    freed_bytes: int = 0
    # Rows `airflow db clean` deleted, per table.
    rows: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        rows = sum(self.rows.values())
        parts = [
            f"{self.trimmed} files trimmed" if self.trimmed else "",
            f"{self.deleted} deleted" if self.deleted else "",
            f"{self.freed_bytes / MB:.1f} MB freed" if self.freed_bytes else "",
            f"{self.rows.get('dag_run', 0)} runs cleaned ({rows} rows in all)" if rows else "",
        ]
        return f"{self.step}: {', '.join(filter(None, parts)) or 'nothing to do'}"


def trim_log(path: Path, max_bytes: int) -> int:
    """Cut `path` to nothing when it holds more than `max_bytes`, first copying its newest whole
    lines to `<path>.1`: those of its last `max_bytes`, and any appended during the copy.
    Returns the bytes freed (0 if under the cap).

    Copy-then-truncate, because the writers keep the file open and cannot be told to reopen it.
    That is safe for the lab's writers because each opened the file with O_APPEND (`open("ab")`
    in `app.core.process` and `app.airflow_runner`, log4j2's `append = true`): the kernel puts
    each of their writes at the file's end *at that moment*, so after the truncation their next
    line lands at offset 0. A writer with its own offset would go on writing at its old position
    and leave a hole of NUL bytes as long as the old file. Lines written between the last read
    of the copy and the truncation (microseconds; logrotate's `copytruncate` has the same window)
    are lost; nothing else is.
    """
    size = path.stat().st_size
    if size <= max_bytes:
        return 0
    kept = path.with_name(path.name + ".1")
    partial = path.with_name(path.name + ".1.partial")
    replaced = kept.stat().st_size if kept.exists() else 0
    with path.open("r+b") as log, partial.open("wb") as out:
        log.seek(size - max_bytes)
        log.readline()  # the copy starts at a whole line
        dropped = log.tell()
        # Copies up to the end as it is now, lines appended meanwhile included; the truncation
        # follows the last read at once, to keep the window of lost lines short.
        shutil.copyfileobj(log, out, MB)
        log.truncate(0)
    partial.replace(kept)
    return dropped + replaced


def open_paths() -> set[Path]:
    """Regular files any process of this user holds open (their logs among them)."""
    paths: set[Path] = set()
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            paths.update(Path(entry.path) for entry in process.open_files())
    return paths


def tidy_lab_logs(logs: Path, max_bytes: int, keep_days: float, now: float) -> Tidied:
    """Trim each `logs/*.log` over `max_bytes` (`trim_log`); delete the `*.log` and `*.log.1`
    nothing wrote for `keep_days`, except those a process holds open (deleted, its lines would
    go on into a file nobody can read, and the disk space would not come back)."""
    tidied = Tidied("lab logs")
    if not logs.is_dir():
        return tidied
    cutoff = now - keep_days * DAY_SECONDS
    held = open_paths()
    for path in sorted([*logs.glob("*.log"), *logs.glob("*.log.1")]):
        # A file removed meanwhile (by a test that made it, say) is nothing to do.
        with contextlib.suppress(FileNotFoundError):
            info = path.stat()
            if info.st_mtime < cutoff and path.resolve() not in held:
                path.unlink()
                tidied.deleted += 1
                tidied.freed_bytes += info.st_size
            elif path.suffix == ".log" and (freed := trim_log(path, max_bytes)):
                tidied.trimmed += 1
                tidied.freed_bytes += freed
    return tidied


def _newest_write(folder: Path) -> tuple[float, int]:
    """The latest modification time under `folder` (itself included) and its size in bytes."""
    newest, size = folder.stat().st_mtime, 0
    for parent, _, names in os.walk(folder):
        for name in names:
            info = (Path(parent) / name).lstat()
            newest, size = max(newest, info.st_mtime), size + info.st_size
    return newest, size


def _folders(path: Path) -> Iterator[Path]:
    return (child for child in sorted(path.iterdir()) if child.is_dir() and not child.is_symlink())


def tidy_task_logs(task_logs: Path, keep_days: float, now: float) -> Tidied:
    """Delete the folders one level below each of Airflow's log folders (a DAG run's
    `dag_id=<dag>/run_id=<run>`, the DAG processor's `dag_processor/<day>`) nothing was
    written in for `keep_days`, and a DAG's folder once it holds no run."""
    tidied = Tidied("airflow task logs")
    if not task_logs.is_dir():
        return tidied
    cutoff = now - keep_days * DAY_SECONDS
    for top in _folders(task_logs):
        for folder in _folders(top):
            newest, size = _newest_write(folder)
            if newest < cutoff:
                shutil.rmtree(folder)
                tidied.deleted += 1
                tidied.freed_bytes += size
        if top.name.startswith("dag_id=") and not any(top.iterdir()):
            top.rmdir()
    return tidied


def clean_airflow_metadata(settings: Settings, keep_days: float) -> Tidied:
    """`airflow db clean` of every row older than `keep_days`, not archived, run against the
    lab's metadata database. Airflow keeps each DAG's latest scheduled run whatever its age."""
    before = datetime.now(UTC) - timedelta(days=keep_days)
    environment = {
        **os.environ,
        **settings.as_environment(),
        **airflow_environment(settings, metadata_database(settings)),
    }
    argv = [str(AIRFLOW), "db", "clean", "--clean-before-timestamp", before.isoformat()]
    process = subprocess.run(
        [*argv, "--yes", "--skip-archive", "--error-on-cleanup-failure"],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if process.returncode != 0:
        tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-15:])
        raise LabError(
            f"`airflow db clean` failed (exit {process.returncode}), so some of Airflow's old "
            f"metadata rows may still be there (nothing newer than {keep_days:g} days was "
            f"touched). Its last lines:\n{tail}\nCheck PostgreSQL with `task infra-status`, "
            "then run `task tidy` again: it finishes the job."
        )
    tables = CHECKING.findall(process.stdout)
    counts = [int(n) for n in FOUND.findall(process.stdout)]
    return Tidied("airflow metadata", rows=dict(zip(tables, counts, strict=False)))


def tidy_logs(settings: Settings) -> list[Tidied]:
    """The two log steps with the settings' limits."""
    now = datetime.now(UTC).timestamp()
    return [
        tidy_lab_logs(
            settings.lab_home / "logs",
            settings.lab_log_max_mb * MB,
            settings.lab_log_keep_days,
            now,
        ),
        tidy_task_logs(airflow_home(settings) / "logs", settings.lab_log_keep_days, now),
    ]


def tidy_lab(settings: Settings, report: Callable[[Tidied], None] = print) -> dict[str, float]:
    """Every step, each `report`ed as it ends (the logs' before Airflow's metadata, whose
    failure raises a `LabError`); what they freed, in numbers (the DAG's return value)."""
    steps = tidy_logs(settings)
    for step in steps:
        report(step)
    steps.append(clean_airflow_metadata(settings, settings.lab_log_keep_days))
    report(steps[-1])
    return {
        "trimmed": sum(step.trimmed for step in steps),
        "deleted": sum(step.deleted for step in steps),
        "mb_freed": round(sum(step.freed_bytes for step in steps) / MB, 1),
        "runs_cleaned": sum(step.rows.get("dag_run", 0) for step in steps),
        "rows_cleaned": sum(sum(step.rows.values()) for step in steps),
    }


def main() -> None:
    settings = get_settings()
    setup_logging("housekeeping", settings)
    try:
        tidy_lab(settings, lambda step: print(f"housekeeping: {step}", flush=True))
    except LabError as error:
        sys.exit(f"housekeeping: {error}")


if __name__ == "__main__":
    main()
