"""Daily: keep the lab's logs and Airflow's metadata bounded, however long the lab runs.

One task, `tidy_lab` (`app.housekeeping`, the same as `task tidy`): each `.lab/logs/*.log` over
`LAB_LOG_MAX_MB` is cut to its newest part (`<name>.log.1`); log files, Airflow's task-log
folders and Airflow's metadata rows (`airflow db clean`) older than `LAB_LOG_KEEP_DAYS` go.

Thin on purpose, like `user_events_pipeline`: the logic is tested without Airflow
(`tests/test_housekeeping.py`) and imported inside the task so parsing this file stays cheap.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

HOUSEKEEPING_DAG_ID = "lab_housekeeping"


@dag(
    dag_id=HOUSEKEEPING_DAG_ID,
    schedule=timedelta(days=1),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    # A run tidies everything due so far: missed runs add nothing.
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        # `airflow db clean` of a first week's rows takes seconds; a hung one must not stay.
        "execution_timeout": timedelta(minutes=40),
    },
    tags=["housekeeping"],
    doc_md=__doc__,
)
def lab_housekeeping() -> None:
    @task
    def tidy_lab() -> dict[str, float]:
        """Trim and delete old logs, clean old metadata; what it freed, in numbers."""
        from app import housekeeping
        from app.core.config import get_settings

        return housekeeping.tidy_lab(get_settings())

    tidy_lab()


lab_housekeeping()
