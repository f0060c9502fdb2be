"""The whole lab, the way a user runs it, checked to the last record (issue 7).

API and Spark stream run as processes; the generator sends a fixed-seed crowd for a few seconds
and writes every record the API acknowledged to a file; the DAG runs through `airflow dags test`;
`task analyze`'s entry point runs both notebooks. Then every store is compared with an
independent computation from the acknowledged records.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from psycopg2 import sql

from app.core.clients import postgres_connection, s3_filesystem
from app.core.config import ROOT, Settings
from app.lake.sink_log import committed_files
from tests.support import (
    event_store,
    make_isolated_settings,
    remove_isolated,
    start_group,
    stop_group,
)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return start_group(argv, env, log)


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_group(process, timeout=60)


@pytest.fixture(scope="module")
def lab(lab_services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    from app.infra.bootstrap import bootstrap

    settings = make_isolated_settings(lab_services).model_copy(
        update={"api_port": _free_port(), "spark_trigger_interval": "2 seconds"}
    )
    bootstrap(settings)
    yield settings
    remove_isolated(settings)


def _acknowledged(record_file: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The generator's record file: one JSON line per acknowledged record, events and orders."""
    events, orders = [], []
    for line in record_file.read_text().splitlines():
        item = json.loads(line)
        (orders if item["kind"] == "purchase" else events).append(item["record"])
    return events, orders


def _wait_for(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(2)


def test_every_acknowledged_record_lands_exactly_once(lab: Settings, tmp_path: Path) -> None:
    env = {**os.environ, **lab.as_environment(), "PYTHONPATH": str(ROOT)}
    python = sys.executable
    api = _start([python, "-m", "app.api", "--no-reload"], env, tmp_path / "api.log")
    stream = _start([python, "-m", "app.lake"], env, tmp_path / "spark.log")
    try:
        _wait_for(lambda: _api_ready(lab.api_url), "the API", timeout=60)
        record_file = tmp_path / "acknowledged.jsonl"
        generator = subprocess.run(
            [
                python,
                "-m",
                "app.generator",
                "--seed",
                "20261127",
                "--count",
                "20",
                "--users-per-second",
                "50",
                "--url",
                lab.api_url,
                "--record-file",
                str(record_file),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert generator.returncode == 0, generator.stdout + generator.stderr
        events, orders = _acknowledged(record_file)
        assert events and orders, "the generator acknowledged nothing"

        from app.airflow_runner import dags_test

        dag_run = dags_test(lab)
        assert dag_run.returncode == 0, dag_run.stdout[-3000:] + dag_run.stderr[-3000:]

        lake = pd.DataFrame()

        def lake_complete() -> bool:
            nonlocal lake
            lake = _read_lake(lab)
            return len(lake) >= len(orders)

        _wait_for(lake_complete, "Spark to land every order", timeout=600)
    finally:
        _stop(stream)
        _stop(api)

    _assert_mongo_exact(lab, events)
    _assert_lake_exact(lake, orders)

    now = datetime.now(UTC).isoformat()
    analyze = subprocess.run(
        [python, "-m", "app.analysis.run", "--now", now, "--output", str(tmp_path / "reports")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert analyze.returncode == 0, analyze.stdout[-3000:] + analyze.stderr[-3000:]
    _assert_repeat_purchases_exact(lab, orders)


def _api_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _event_identity(event: dict[str, Any]) -> tuple[str, ...]:
    """What identifies an event across hops. MongoDB dates hold milliseconds (the wire and the
    lake keep microseconds), so the time is compared to the millisecond."""
    stamp = event["TimeStamp"]
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp)
    millis = stamp.astimezone(UTC).isoformat(timespec="milliseconds")
    return (event["UserId"], event["SessionId"], event["EventName"], millis)


def _assert_mongo_exact(settings: Settings, events: list[dict[str, Any]]) -> None:
    store = event_store(settings)
    stored = list(store.events.find({}, {"_id": 0}))
    assert Counter(map(_event_identity, stored)) == Counter(map(_event_identity, events))
    expected = Counter((e["UserId"], e["EventName"]) for e in events)
    counts = {
        (doc["UserId"], doc["EventName"]): doc["EventCount"]
        for doc in store.counts.find({}, {"_id": 0})
    }
    assert counts == dict(expected)


def _read_lake(settings: Settings) -> pd.DataFrame:
    import pyarrow.dataset as ds

    # Only what the file sink committed: a reader must not count a batch cut short.
    files = committed_files(settings, settings.purchases_url)
    if not files:
        return pd.DataFrame()
    dataset = ds.dataset(files, filesystem=s3_filesystem(settings), format="parquet")
    table = dataset.to_table()
    return table.to_pandas()


def _assert_lake_exact(lake: pd.DataFrame, orders: list[dict[str, Any]]) -> None:
    assert sorted(lake["OrderId"]) == sorted(o["OrderId"] for o in orders)
    by_id = {o["OrderId"]: o for o in orders}
    for row in lake.itertuples():
        sent = by_id[row.OrderId]
        assert row.UserId == sent["UserId"]
        assert row.TotalPrice == sent["TotalPrice"]
        assert [p["ProductId"] for p in row.Products] == [p["ProductId"] for p in sent["Products"]]


def _assert_repeat_purchases_exact(settings: Settings, orders: list[dict[str, Any]]) -> None:
    lines = pd.DataFrame(
        [
            {
                "user_id": o["UserId"],
                "product_id": p["ProductId"],
                "order_id": o["OrderId"],
                "quantity": p["ItemCount"],
            }
            for o in orders
            for p in o["Products"]
        ]
    )
    grouped = lines.groupby(["user_id", "product_id"]).agg(
        order_count=("order_id", "nunique"), total_quantity=("quantity", "sum")
    )
    expected = {
        (user, product): (int(row.order_count), int(row.total_quantity))
        for (user, product), row in grouped[grouped.order_count > 1].iterrows()
    }
    conn = postgres_connection(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT user_id, product_id, order_count, total_quantity FROM {}").format(
                    sql.Identifier(settings.repeat_purchases_table)
                )
            )
            stored = {(u, p): (n, q) for u, p, n, q in cur.fetchall()}
    finally:
        conn.close()
    assert stored == expected
    assert expected, "the generator should produce repeat purchases within a few seconds"
