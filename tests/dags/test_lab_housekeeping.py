"""The housekeeping DAG: it parses, runs daily, and a real run tidies a lab's logs; its own run's
metadata goes once older than the keep time."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.airflow_runner import dags_test
from app.core.clients import postgres_connection
from app.core.config import Settings
from app.housekeeping import DAY_SECONDS, clean_airflow_metadata

DAG_ID = "lab_housekeeping"


@pytest.fixture(scope="module")
def dag(dag_bag: Any) -> Any:
    assert dag_bag.import_errors == {}
    return dag_bag.dags[DAG_ID]


def test_housekeeping_runs_daily_one_at_a_time_and_retries(dag: Any) -> None:
    assert dag.schedule == timedelta(days=1)
    assert dag.catchup is False and dag.max_active_runs == 1
    (task,) = dag.tasks
    assert task.task_id == "tidy_lab" and task.retries >= 1
    assert task.execution_timeout is not None


def _old(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"a line\n")
    then = time.time() - 8 * DAY_SECONDS
    for each in (path, path.parent, path.parent.parent):
        os.utime(each, (then, then))
    return path


def _runs(settings: Settings) -> int:
    conn = postgres_connection(settings, settings.postgres_airflow_database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM dag_run WHERE dag_id = %s", (DAG_ID,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.slow
def test_a_dag_run_tidies_the_lab_and_its_metadata_goes_once_old(
    lab_services: Settings, tmp_path: Path
) -> None:
    # A lab home and a metadata database of the test's own: the lab's logs and runs stay.
    settings = lab_services.model_copy(
        update={"lab_home": tmp_path, "postgres_airflow_database": "airflow_tests_housekeeping"}
    )
    old_log = _old(tmp_path / "logs" / "kafka-spare-test-x.log")
    old_run = _old(tmp_path / "airflow" / "logs" / "dag_id=gone" / "run_id=r" / "task_id=t" / "1")
    recent_log = tmp_path / "logs" / "kafka.log"
    recent_log.write_bytes(b"a line\n")

    run = dags_test(settings, dag_id=DAG_ID)

    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert not old_log.exists() and not old_run.parent.exists() and recent_log.exists()
    assert _runs(settings) >= 1
    time.sleep(1)
    cleaned = clean_airflow_metadata(settings, keep_days=0.5 / DAY_SECONDS)
    assert cleaned.rows["dag_run"] >= 1 and cleaned.rows["task_instance"] >= 1
    assert _runs(settings) == 0
