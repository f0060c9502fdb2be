"""Probes of the services the console watches: the API, Kafka, Airflow, MongoDB, PostgreSQL.

Each probe is a small function that asks one service one cheap question and returns a `Reading`;
it raises when the service does not answer, and the sampler turns that into a "down" hop. Totals
that only grow (requests, records) go in `counters`: the sampler turns them into rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pymongo import DESCENDING
from pymongo.errors import PyMongoError

from app.core.airflow_api import AirflowClient
from app.core.clients import mongo_client
from app.core.config import Settings
from app.core.topics import topic_ends
from app.figures import mongo_documents, repeat_purchases_rows
from app.pipeline.store import EventStore

# Routes that are not ingest: the console's own scrapes and health checks would count as traffic.
NOT_INGEST = ("/metrics", "/health", "/health/ready")


@dataclass
class Reading:
    """What one probe saw: figures to show as they are, and totals to turn into rates."""

    figures: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    # Set when the service answered but its hop is not working (e.g. no job holds the stream's
    # checkpoint): the hop shows as down with this reason, and with its figures.
    down: str | None = None


def api_reading(settings: Settings, client: httpx.Client) -> Reading:
    """Request, record, refusal and produce-failure totals from the API's `/metrics`."""
    response = client.get(f"{settings.api_url}/metrics", timeout=2)
    response.raise_for_status()
    requests = records = failures = 0.0
    refusals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if family.name == "api_requests" and sample.labels["route"] not in NOT_INGEST:
                requests += sample.value
                status = sample.labels["status"]
                if not status.startswith("2"):
                    refusals[status] = refusals.get(status, 0) + sample.value
            elif family.name == "api_records_produced":
                records += sample.value
            elif family.name == "api_produce_failures":
                failures += sample.value
    return Reading(
        figures={
            "requests": int(requests),
            "records": int(records),
            "refusals": {status: int(n) for status, n in sorted(refusals.items())},
            "produce_failures": int(failures),
        },
        counters={"api_requests": requests, "api_records": records},
    )


def kafka_reading(settings: Settings) -> Reading:
    """Records and partitions of both topics, the drain group's lag, and a line per partition
    whose unread records retention deleted or is about to delete."""
    ends = topic_ends(settings, timeout=3)
    figures: dict[str, Any] = {
        "topics": [
            {"topic": end.topic, "partitions": end.partitions, "records": end.records}
            for end in ends
        ],
        "drain_lag": next((end.drain_lag for end in ends if end.drain_lag is not None), None),
    }
    missing = [end.topic for end in ends if not end.partitions]
    if missing:
        figures["missing"] = missing
    user_events, purchased_item = ends  # in the order of `lab_topics`
    if warnings := user_events.retention_lines():
        figures["retention"] = warnings
    return Reading(
        figures,
        {
            "kafka_user_events": user_events.records,
            "kafka_purchased_item": purchased_item.records,
        },
    )


def airflow_reading(settings: Settings, airflow: AirflowClient) -> Reading:
    """The DAG's last five runs (state, duration) and when the next one is due."""
    dag = airflow.get(f"/dags/{settings.dag_id}")
    runs = airflow.get(f"/dags/{settings.dag_id}/dagRuns", order_by="-run_after", limit=5)
    return Reading(
        {
            "dag_id": settings.dag_id,
            "paused": dag.get("is_paused"),
            "next_run": dag.get("next_dagrun_run_after"),
            "runs": [
                {
                    "run_id": run["dag_run_id"],
                    "state": run["state"],
                    "started": run.get("start_date"),
                    "duration": run.get("duration"),
                }
                for run in runs.get("dag_runs", [])
            ],
        }
    )


def mongo_reading(store: EventStore) -> Reading:
    """Documents in the three collections (`$collStats`' counts: no document is read)."""
    documents = mongo_documents(store)
    counts = {
        "user_events": documents[store.events.name],
        "user_event_counts": documents[store.counts.name],
        "quarantine": documents[store.quarantine.name],
    }
    return Reading(counts, {"mongo_events": counts["user_events"]})


def drain_gaps_reading(settings: Settings, store: EventStore) -> Reading:
    """The latest offsets the drain found lost (retention, lost data): shown on the Kafka hop,
    where they were lost, though the drain records them in MongoDB. MongoDB down is the
    MongoDB hop's state, not Kafka's: then there is nothing to add here."""
    try:
        return Reading({"drain_gaps": store.recorded_gap_lines(settings.topic_user_events)})
    except PyMongoError:
        return Reading()


def top_users_reading(store: EventStore, n: int = 5) -> Reading:
    """The largest (UserId, EventName) counts: one sorted read of the counts collection."""
    rows = store.counts.find({}, {"_id": 0, "UserId": 1, "EventName": 1, "EventCount": 1})
    return Reading({"top_users": list(rows.sort("EventCount", DESCENDING).limit(n))})


def open_event_store(settings: Settings) -> EventStore:
    """One client for the console's life: pymongo reconnects by itself after an outage."""
    return EventStore.connect(settings, mongo_client(settings, timeout_ms=2000))


class PostgresReader:
    """Rows in `repeat_purchases` and when its file last changed (the table keeps no time), on
    one connection for the console's life, opened again after any error (a restart)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conn: Any = None

    def reading(self) -> Reading:
        from app.core.clients import postgres_connection

        if self.conn is None:
            self.conn = postgres_connection(self.settings)
            self.conn.autocommit = True  # each probe sees the latest committed table
        try:
            return self._read(self.conn)
        except Exception:
            self.conn.close()
            self.conn = None
            raise

    def _read(self, conn: Any) -> Reading:
        with conn.cursor() as cur:
            table = repeat_purchases_rows(self.settings, cur)
        if table.rows is None:
            return Reading({"table": table.table, "rows": None})
        return Reading({"table": table.table, "rows": table.rows, "written": table.written})
