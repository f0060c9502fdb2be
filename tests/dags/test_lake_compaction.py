"""The compaction DAG: it parses, runs hourly one at a time, and a real run merges a day's files
(of a sink log written as Spark writes it) into one, every row kept."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.airflow_runner import dags_test
from app.core.config import Settings, get_settings
from app.lake.sink_log import committed_files, folder_files
from app.lake.storage import ensure_bucket, location
from tests.support import make_isolated_settings, remove_isolated

DAG_ID = "lake_compaction"


@pytest.fixture(scope="module")
def dag(dag_bag: Any) -> Any:
    assert dag_bag.import_errors == {}
    return dag_bag.dags[DAG_ID]


def test_compaction_runs_hourly_one_at_a_time_and_retries(dag: Any) -> None:
    assert dag.schedule == timedelta(minutes=get_settings().lake_compact_every_minutes)
    assert get_settings().lake_compact_every_minutes == 60
    assert dag.catchup is False and dag.max_active_runs == 1
    (task,) = dag.tasks
    assert task.task_id == "compact_lake" and task.retries >= 1
    assert task.execution_timeout is not None


def _sink_with_small_files(settings: Settings, files: int) -> list[dict[str, Any]]:
    """A purchases sink as a stream leaves it after 10 micro-batches: `files` small files of one
    day, listed by `_spark_metadata/9.compact` in Spark's format. Returns the rows."""
    fs, folder = location(settings, settings.purchases_url)
    entries, rows = [], []
    for n in range(files):
        part = [{"OrderId": f"O-{n}-{i}", "kafka_offset": n * 10 + i} for i in range(3)]
        rows += part
        key = f"{folder}/ingest_date=2026-12-01/part-{n:05d}-x.c000.snappy.parquet"
        with fs.open(key, "wb") as out:
            pq.write_table(pa.Table.from_pylist(part), out)
        entries.append(
            {
                "path": f"s3a://{key}",
                "size": fs.info(key)["size"],
                "isDir": False,
                "modificationTime": 1_796_000_000_000 + n,
                "blockReplication": 1,
                "blockSize": 33554432,
                "action": "add",
            }
        )
    body = "\n".join(["v1", *(json.dumps(entry) for entry in entries)])
    fs.pipe_file(f"{folder}/_spark_metadata/9.compact", body.encode())
    return rows


@pytest.mark.slow
def test_a_dag_run_merges_a_days_small_files_into_one(lab_services: Settings) -> None:
    settings = make_isolated_settings(lab_services).model_copy(
        update={"postgres_airflow_database": "airflow_tests"}
    )
    ensure_bucket(settings)
    try:
        rows = _sink_with_small_files(settings, 6)
        run = dags_test(settings, dag_id=DAG_ID)
        assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        files = committed_files(settings, settings.purchases_url)
        assert len(files) == 1
        fs, _ = location(settings, settings.purchases_url)
        merged = pq.read_table(fs.open(files[0])).to_pylist()
        assert merged == rows
        # The replaced files wait out their grace time (readers may have listed them).
        assert len(folder_files(settings, settings.purchases_url)) == 7
    finally:
        remove_isolated(settings)
