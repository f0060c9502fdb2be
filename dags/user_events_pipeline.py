"""Every 2 minutes: drain `UserEvents` from Kafka into MongoDB, then refresh the per-user counts.

The drain is a mapped task: `DRAIN_PARALLELISM` drains (default 1) each read their share of the
topic's partitions, side by side when the executor has the slots; the counts refresh waits for
all of them.

Thin on purpose: the logic lives in `app.pipeline.drain` and `app.pipeline.counts`, is tested
without Airflow, and is imported inside the tasks so parsing this file stays cheap. Names,
endpoints and limits come from the lab's settings (environment / `.env`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from app.core.config import get_settings

settings = get_settings()


@dag(
    dag_id=settings.dag_id,
    schedule=timedelta(minutes=2),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    # Each run drains everything waiting, so runs missed while Airflow was down add nothing.
    catchup=False,
    # One run at a time keeps the work in order; two refreshes at once would still count
    # exactly (app.pipeline.counts), a second run would only repeat work.
    max_active_runs=1,
    default_args={
        "retries": 3,
        "retry_delay": timedelta(seconds=20),
        # A hung call must not hold the only active run for ever.
        "execution_timeout": timedelta(seconds=settings.drain_max_seconds + 300),
    },
    tags=["kafka", "mongodb"],
    doc_md=__doc__,
)
def user_events_pipeline() -> None:
    @task
    def partition_groups() -> list[list[int]]:
        """The topic's partitions, split into one group per drain."""
        from app.pipeline.drain import partition_groups

        return partition_groups(get_settings())

    @task
    def drain_user_events(partitions: list[int]) -> dict[str, Any]:
        """Store every message waiting in `partitions`; commit offsets after each stored batch."""
        from app.pipeline.drain import drain_user_events

        return drain_user_events(get_settings(), partitions).as_dict()

    @task
    def refresh_event_counts() -> dict[str, Any]:
        """Count the newly stored events into `user_event_counts` (exact, idempotent)."""
        from app.pipeline.counts import refresh_event_counts

        return refresh_event_counts(get_settings()).as_dict()

    drain_user_events.expand(partitions=partition_groups()) >> refresh_event_counts()


user_events_pipeline()
