"""The console's probes and sampler: figures read from a real checkpoint layout, the lake on the
lab's S3, a down service, and rates made from totals."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.console.lake_probe import BestSellers, quarantine_reading
from app.console.probes import (
    PostgresReader,
    Reading,
    api_reading,
    drain_gaps_reading,
    kafka_reading,
    mongo_reading,
    open_event_store,
)
from app.console.sampler import Probe, Sampler
from app.console.stream_probe import spark_reading, stream_job_running
from app.core.clients import postgres_connection, s3_filesystem
from app.core.config import Settings, get_settings
from app.pipeline.drain import drain_user_events
from tests.pipeline.helpers import (
    commit_offsets,
    delete_records_below,
    make_events,
    pipeline_settings,
    produce_to,
)
from tests.support import free_port


def _settle(sampler: Sampler) -> None:
    """One tick once every probe is due again (past the pause its last read earned), and its
    reads finished."""
    time.sleep(max([0.0, *(t - time.monotonic() for t in sampler.not_before.values())]))
    sampler.tick()
    deadline = time.monotonic() + 10
    while sampler.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)


def _write_batch(
    folder: Path, batch: int, ends: dict[str, int], started: float, done: float
) -> None:
    offsets = folder / "offsets" / str(batch)
    commit = folder / "commits" / str(batch)
    offsets.parent.mkdir(parents=True, exist_ok=True)
    commit.parent.mkdir(parents=True, exist_ok=True)
    offsets.write_text(f'v1\n{{"batchWatermarkMs":0}}\n{json.dumps({"PurchasedItem": ends})}\n')
    commit.write_text('v1\n{"nextBatchWatermarkMs":0}\n')
    os.utime(offsets, (started, started))
    os.utime(commit, (done, done))


@pytest.fixture
def checkpoint_settings(lab_services: Settings, tmp_path: Path) -> Settings:
    return lab_services.model_copy(update={"spark_checkpoint_dir": str(tmp_path)})


def test_spark_figures_come_from_the_last_committed_batch(checkpoint_settings: Settings) -> None:
    folder = Path(checkpoint_settings.checkpoint_dir) / "purchased_items"
    now = time.time()
    _write_batch(folder, 0, {"0": 10, "1": 5}, now - 100, now - 98)
    _write_batch(folder, 1, {"0": 40, "1": 15}, now - 70, now - 66)

    figures = spark_reading(checkpoint_settings).figures

    assert figures["batch"] == 1
    assert figures["rows"] == 40
    assert figures["duration"] == pytest.approx(4, abs=0.05)
    assert figures["rows_per_second"] == pytest.approx(10, abs=0.2)
    # The first record of batch 1 could have arrived right after batch 0 fixed its offsets.
    assert figures["freshness"] == pytest.approx(34, abs=0.05)


def test_spark_is_down_unless_a_job_holds_the_checkpoint(checkpoint_settings: Settings) -> None:
    lock = Path(checkpoint_settings.checkpoint_dir) / "job.lock"
    lock.write_text("")
    assert "not running" in (spark_reading(checkpoint_settings).down or "")

    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert spark_reading(checkpoint_settings).down is None


def test_a_stream_on_s3_is_running_while_its_lease_is_fresh(isolated_settings: Settings) -> None:
    checkpoint = f"s3a://{isolated_settings.s3_bucket}/{isolated_settings.s3_purchases_prefix}cp"
    settings = isolated_settings.model_copy(update={"spark_checkpoint_dir": checkpoint})
    fs = s3_filesystem(settings)
    lease = f"{checkpoint.removeprefix('s3a://')}/writer.lease"
    assert stream_job_running(settings) is False

    fs.pipe_file(lease, b"{}")  # what a running job keeps renewing
    try:
        assert stream_job_running(settings) is True
        assert spark_reading(settings).down is None
        # A lease older than its time-out (the server's Date may lag Last-Modified by 1 s).
        stale = settings.model_copy(update={"spark_writer_lease_seconds": -5})
        assert stream_job_running(stale) is False
    finally:
        fs.rm(lease)


def _write_committed(settings: Settings, batch: int, orders: list[dict[str, object]]) -> None:
    fs = s3_filesystem(settings)
    root = f"{settings.s3_bucket}/{settings.s3_purchases_prefix}".rstrip("/")
    path = f"{root}/ingest_date={datetime.now(UTC).date()}/part-{batch}.parquet"
    with fs.open(path, "wb") as handle:
        pq.write_table(pa.Table.from_pylist(orders), handle)
    entry = {"path": f"s3a://{path}", "size": fs.size(path), "isDir": False, "action": "add"}
    fs.pipe_file(f"{root}/_spark_metadata/{batch}", f"v1\n{json.dumps(entry)}\n".encode())


@pytest.fixture
def lake_settings(isolated_settings: Settings) -> Iterator[Settings]:
    yield isolated_settings
    fs = s3_filesystem(isolated_settings)
    fs.rm(f"{isolated_settings.s3_bucket}/{isolated_settings.s3_purchases_prefix}", recursive=True)


def test_best_sellers_count_the_last_hour_once_per_order(lake_settings: Settings) -> None:
    now = datetime.now(UTC)

    def order(order_id: str, minutes_ago: int, *lines: tuple[str, int]) -> dict[str, object]:
        return {
            "OrderId": order_id,
            "TimeStamp": now - timedelta(minutes=minutes_ago),
            "Products": [{"ProductId": p, "ItemCount": n} for p, n in lines],
        }

    first = order("A", 10, ("P1", 2), ("P2", 1))
    _write_committed(lake_settings, 0, [first, order("old", 120, ("P3", 5))])
    best = BestSellers(lake_settings)
    assert best.reading().figures["top_products"] == [
        {"product": "P1", "units": 2},
        {"product": "P2", "units": 1},
    ]

    # A re-delivered order (same OrderId, next batch) counts once; a new one adds up.
    _write_committed(lake_settings, 1, [first, order("D", 5, ("P2", 3))])
    assert best.reading().figures["top_products"] == [
        {"product": "P2", "units": 4},
        {"product": "P1", "units": 2},
    ]


def _compact(settings: Settings, batch: int, replaced: list[str]) -> str:
    """Replace the committed files `replaced` by one file of their rows, as a compaction does:
    the new file is added and the old ones leave the sink log in one commit."""
    fs = s3_filesystem(settings)
    root = f"{settings.s3_bucket}/{settings.s3_purchases_prefix}".rstrip("/")
    rows = pa.concat_tables(pq.read_table(path, filesystem=fs) for path in replaced)
    path = f"{root}/ingest_date={datetime.now(UTC).date()}/compacted-{batch}.parquet"
    with fs.open(path, "wb") as handle:
        pq.write_table(rows, handle)
    entries = [{"path": f"s3a://{path}", "size": fs.size(path), "isDir": False, "action": "add"}]
    entries += [
        {"path": f"s3a://{old}", "size": 0, "isDir": False, "action": "delete"} for old in replaced
    ]
    body = "\n".join(json.dumps(entry) for entry in entries)
    fs.pipe_file(f"{root}/_spark_metadata/{batch}", f"v1\n{body}\n".encode())
    return path


def test_lake_probes_read_each_file_once_and_forget_files_a_compaction_replaced(
    lake_settings: Settings,
) -> None:
    """The console keeps what it read of each committed file while the file is listed: after a
    compaction its figures are the same, and only the new file is remembered."""
    now = datetime.now(UTC)
    orders = [
        {
            "OrderId": f"O{n}",
            "TimeStamp": now - timedelta(minutes=n),
            "Products": [{"ProductId": "P1", "ItemCount": 1}],
        }
        for n in range(3)
    ]
    for batch, order in enumerate(orders):
        _write_committed(lake_settings, batch, [order])
    # The quarantine probe counts the rows of the same committed files.
    settings = lake_settings.model_copy(
        update={"s3_quarantine_prefix": lake_settings.s3_purchases_prefix}
    )
    best, rows = BestSellers(settings), {}
    top = [{"product": "P1", "units": 3}]
    assert best.reading().figures["top_products"] == top
    assert quarantine_reading(settings, rows).figures == {"quarantined_rows": 3}

    compacted = _compact(settings, 3, list(rows))

    assert best.reading().figures["top_products"] == top
    assert quarantine_reading(settings, rows).figures == {"quarantined_rows": 3}
    assert list(rows) == list(best.numbers) == [compacted]


def test_services_that_do_not_answer_are_down_with_reason_and_fix(
    lab_services: Settings,
) -> None:
    settings = lab_services.model_copy(
        update={
            "api_port": free_port(),
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
            "mongo_url": f"mongodb://127.0.0.1:{free_port()}",
            "postgres_port": free_port(),
        }
    )
    store = open_event_store(settings)
    with httpx.Client() as http:
        probes = [
            Probe("api", "api", 0, lambda: api_reading(settings, http)),
            Probe("kafka", "kafka", 0, lambda: kafka_reading(settings)),
            Probe("mongo", "mongo", 0, lambda: mongo_reading(store)),
            Probe("postgres", "postgres", 0, PostgresReader(settings).reading),
        ]
        sampler = Sampler(settings, probes)
        _settle(sampler)
    hops = sampler.snapshot()["hops"]
    fixes = {
        "api": "task up",
        "kafka": "task infra-up",
        "mongo": "task infra-up",
        "postgres": "task infra-up",
    }
    for hop, fix in fixes.items():
        assert hops[hop]["state"] == "down", hop
        assert hops[hop]["reason"] == "not reachable: nothing answers there (connection refused)"
        assert fix in hops[hop]["fix"]


def test_postgres_probe_keeps_one_connection_and_opens_another_after_losing_it(
    lab_services: Settings,
) -> None:
    reader = PostgresReader(lab_services)
    reader.reading()
    first = reader.conn.get_backend_pid()
    reader.reading()
    assert reader.conn.get_backend_pid() == first  # no new session per tick
    with postgres_connection(lab_services) as admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (first,))
    admin.close()
    with pytest.raises(psycopg2.OperationalError):  # the tick that finds it gone says so...
        reader.reading()
    assert "rows" in reader.reading().figures  # ...and the next one reads on a new one
    assert reader.conn.get_backend_pid() != first


def test_rates_come_from_totals_and_stop_while_the_service_is_down(
    lab_services: Settings,
) -> None:
    totals = iter([10.0, 30.0])

    def read() -> Reading:
        total = next(totals, None)
        if total is None:
            raise ConnectionRefusedError("gone")
        return Reading({"requests": total}, {"api_requests": total})

    sampler = Sampler(lab_services, [Probe("api", "api", 0, read)])
    _settle(sampler)
    assert sampler.snapshot()["rates"]["api_requests"] is None  # one total is no rate yet
    _settle(sampler)
    assert sampler.snapshot()["rates"]["api_requests"] > 0
    _settle(sampler)
    snapshot = sampler.snapshot()
    assert snapshot["hops"]["api"]["state"] == "down"
    assert snapshot["rates"]["api_requests"] is None
    assert [r is not None for r in snapshot["history"]["series"]["api_requests"]] == [
        False,
        False,
        True,
    ]


def test_the_kafka_hop_shows_offsets_retention_deleted_before_the_drain_read_them(
    lab_services: Settings,
) -> None:
    with pipeline_settings(lab_services, kafka_partitions=1) as settings:
        produce_to(settings, 0, make_events(80))
        commit_offsets(settings, {0: 10})
        delete_records_below(settings, 0, 50)
        lost = f"{settings.topic_user_events}[0]: 40 offsets expired before the drain read them"

        assert kafka_reading(settings).figures["retention"] == [f"{lost} (retention)"]
        drain_user_events(settings)
        store = open_event_store(settings)
        try:
            [recorded] = drain_gaps_reading(settings, store).figures["drain_gaps"]
        finally:
            store.events.database.client.close()

        assert recorded.startswith(f"{lost} (retention): offsets 10-49, found ")
        assert "retention" not in kafka_reading(settings).figures  # the group is past it now


def test_a_slow_probe_is_run_less_often() -> None:
    """A read of t seconds is followed by a pause of t x 9 (PROBE_DUTY 0.1): a probe whose read
    grows with the data cannot keep its service busy."""
    starts: list[float] = []

    def read() -> Reading:
        starts.append(time.monotonic())
        time.sleep(0.2)
        return Reading({"n": len(starts)})

    sampler = Sampler(get_settings(), [Probe("slow", "api", 0, read)])
    sampler.tick()
    while sampler.in_flight:
        time.sleep(0.01)
    finished = time.monotonic()
    while time.monotonic() < finished + 1.4:  # 0.2 s x 9 = 1.8 s of pause
        sampler.tick()
        time.sleep(0.05)
    assert len(starts) == 1
    while len(starts) == 1 and time.monotonic() < finished + 5:
        sampler.tick()
        time.sleep(0.05)
    while sampler.in_flight:
        time.sleep(0.01)
    assert len(starts) == 2
    assert starts[1] - starts[0] >= 0.2 * 10 - 0.05
    assert sampler.snapshot()["hops"]["api"]["figures"]["n"] == 2


def test_mongo_reading_counts_every_document_and_a_missing_collection_as_zero(
    isolated_settings: Settings,
) -> None:
    store = open_event_store(isolated_settings)
    try:
        store.events.insert_many([{"_id": n, "EventName": "view"} for n in range(1234)])
        store.counts.insert_one({"_id": "a|view", "EventCount": 1})
        store.quarantine.drop()
        assert mongo_reading(store).figures == {
            "user_events": 1234,
            "user_event_counts": 1,
            "quarantine": 0,
        }
        assert mongo_reading(store).counters == {"mongo_events": 1234}
    finally:
        store.events.drop()
        store.counts.drop()
        store.events.database.client.close()
