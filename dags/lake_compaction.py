"""Every `LAKE_COMPACT_EVERY_MINUTES` (60): merge the lake's small Parquet files into few per day.

One task, `compact_lake` (`app.lake.compaction`, the same as `task lake-compact`). While the Spark
stream runs it holds the lake's writer lock, so the task asks it to compact between two
micro-batches and waits for its answer; when no stream runs, the task compacts itself. Either
way every reader sees each order once throughout, and a kill at any point loses nothing.

Thin on purpose, like `user_events_pipeline`: the logic is tested without Airflow
(`tests/lake/test_compaction.py`) and imported inside the task so parsing this file stays cheap.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from app.core.config import get_settings

settings = get_settings()

COMPACTION_DAG_ID = "lake_compaction"


@dag(
    dag_id=COMPACTION_DAG_ID,
    schedule=timedelta(minutes=settings.lake_compact_every_minutes),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    # A run merges everything small so far: missed runs add nothing.
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        # It may wait that long for the stream's answer, plus the merge itself.
        "execution_timeout": timedelta(seconds=settings.lake_compact_wait_seconds + 600),
    },
    tags=["s3", "lake"],
    doc_md=__doc__,
)
def lake_compaction() -> None:
    @task
    def compact_lake() -> dict[str, Any]:
        """Merge each day's small files (both sinks); what it did, in sum (per sink: its log)."""
        from app.lake.compaction import compact_lake

        results = compact_lake(get_settings())
        return {
            "merged": sum(result.merged for result in results),
            "written": sum(result.written for result in results),
            "files": sum(result.files_after for result in results),
            "deleted": sum(result.deleted for result in results),
        }

    compact_lake()


lake_compaction()
