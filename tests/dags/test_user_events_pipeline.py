"""The DAG: it parses, it is scheduled as the mission says, and a real run leaves exact results."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from app.airflow_runner import dags_test
from app.core.clients import postgres_connection
from app.core.config import ROOT, Settings, get_settings
from tests.pipeline.helpers import (
    committed_offsets,
    expected_counts,
    make_events,
    pipeline_settings,
    produce,
    stored_counts,
)
from tests.support import event_store


@pytest.fixture(scope="module")
def dag(dag_bag: Any) -> Any:
    return dag_bag.dags[get_settings().dag_id]


def test_dag_file_imports_cleanly(dag_bag: Any) -> None:
    assert dag_bag.import_errors == {}
    assert get_settings().dag_id in dag_bag.dag_ids
    # Heavy imports stay inside the tasks, so parsing the file every 30 seconds stays cheap.
    source = (ROOT / "dags" / "user_events_pipeline.py").read_text()
    assert "import kafka" not in source and "import pymongo" not in source


def test_dag_runs_every_two_minutes_one_at_a_time(dag: Any) -> None:
    assert dag.dag_id == "user_events_pipeline"
    assert dag.schedule == timedelta(minutes=2)
    assert dag.catchup is False
    assert dag.max_active_runs == 1


def test_tasks_retry_and_run_partitioned_drains_then_counts(dag: Any) -> None:
    groups = dag.get_task("partition_groups")
    drain = dag.get_task("drain_user_events")
    counts = dag.get_task("refresh_event_counts")
    assert set(dag.task_ids) == {groups.task_id, drain.task_id, counts.task_id}
    assert groups.downstream_task_ids == {drain.task_id}
    # Mapped over the partition groups: one drain each, and the counts wait for all of them.
    assert type(drain).__name__.endswith("MappedOperator")
    assert drain.downstream_task_ids == {counts.task_id}
    assert counts.upstream_task_ids == {drain.task_id}
    for task in (groups, drain, counts):
        assert task.retries >= 1
        assert task.retry_delay > timedelta(0)
        assert task.execution_timeout is not None


@pytest.mark.slow
def test_airflow_dags_test_leaves_exact_results(lab_services: Settings) -> None:
    events = make_events(700)
    poison: list[bytes | None] = [b"not an event", None]
    # A metadata database of the tests' own, so the lab's scheduler never sees this run.
    with pipeline_settings(lab_services, postgres_airflow_database="airflow_tests") as settings:
        produce(settings, [*(event.to_json_bytes() for event in events), *poison])

        run = dags_test(settings)

        assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        store = event_store(settings)
        assert store.events.count_documents({}) == 700
        assert store.quarantine.count_documents({}) == 2
        assert stored_counts(settings) == expected_counts(events)
        assert sum(committed_offsets(settings).values()) == 702
        # Airflow kept its metadata in PostgreSQL, not in the SQLite fallback.
        conn = postgres_connection(settings, settings.postgres_airflow_database)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM dag_run WHERE dag_id = %s", (settings.dag_id,))
                assert cur.fetchone()[0] >= 1
        finally:
            conn.close()
