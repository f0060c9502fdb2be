"""Compaction merges each day's small files into few, and no reader of the lake ever sees an
order lost or doubled: not after a kill at any step, not while the stream runs beside it, and
not after the stream's own next compaction of its log, which starts from the rewritten one."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from pyspark.sql import SparkSession

from app.core.config import ROOT, Settings
from app.lake.compaction import compact_lake, pending_requests
from app.lake.retired import read_retired
from app.lake.sink_log import committed_files, folder_files
from app.lake.storage import location
from tests.lake.helpers import (
    arrow_rows,
    job_environment,
    make_orders,
    run_job,
    start_job,
    wait_for,
)

DAYS = 3
PER_TRIGGER = 8  # orders per micro-batch: many small files from few orders

Key = tuple[str, int, int, str]  # OrderId, Kafka partition and offset, ingest_date


@pytest.fixture
def lake(stream_settings: Settings) -> Settings:
    return stream_settings.model_copy(update={"spark_max_offsets_per_trigger": PER_TRIGGER})


def _produce_days(settings: Settings, count: int, tag: str, days: int = DAYS) -> None:
    """`count` orders whose Kafka timestamps spread over the last `days` UTC days (today last),
    so the lake gets a partition per day, as after days of running."""
    producer = Producer({"bootstrap.servers": settings.kafka_servers, "acks": "all"})
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for n, order in enumerate(make_orders(count, tag)):
        day = today - timedelta(days=days - 1 - n * days // count)
        stamp = day + timedelta(minutes=n % 600)
        producer.produce(
            settings.topic_purchased_item,
            key=order.user_id.encode(),
            value=order.to_json_bytes(),
            timestamp=int(min(stamp, datetime.now(UTC)).timestamp() * 1000),
        )
    assert producer.flush(30) == 0


def _committed(settings: Settings) -> collections.Counter[Key]:
    return collections.Counter(
        (row["OrderId"], row["kafka_partition"], row["kafka_offset"], str(row["ingest_date"]))
        for row in arrow_rows(settings, settings.purchases_url)
    )


def _spark(spark: SparkSession, settings: Settings) -> collections.Counter[Key]:
    rows = (
        spark.read.parquet(settings.purchases_url)
        .selectExpr("OrderId", "kafka_partition", "kafka_offset", "string(ingest_date)")
        .collect()
    )
    return collections.Counter((r[0], r[1], r[2], r[3]) for r in rows)


def _folder(settings: Settings) -> collections.Counter[Key]:
    """As a plain reader sees the folder: every data file, no commit log."""
    import pyarrow.dataset as ds

    folder = settings.purchases_url.removeprefix("s3a://").rstrip("/")
    fs, _ = location(settings, settings.purchases_url)
    table = ds.dataset(folder, filesystem=fs, format="parquet", partitioning="hive").to_table(
        columns=["OrderId", "kafka_partition", "kafka_offset", "ingest_date"]
    )
    return collections.Counter(
        (row["OrderId"], row["kafka_partition"], row["kafka_offset"], str(row["ingest_date"]))
        for row in table.to_pylist()
    )


def _files_per_day(settings: Settings) -> dict[str, int]:
    days: dict[str, int] = collections.Counter()
    for path in committed_files(settings, settings.purchases_url):
        days[path.rsplit("/", 2)[-2]] += 1
    return dict(days)


def _compact_killed_at(settings: Settings, step: str, tmp_path: Path) -> None:
    """`task lake-compact` in a process of its own, SIGKILLed where `step` is called."""
    script = textwrap.dedent(
        f"""
        import os, signal
        import app.lake.compaction as compaction

        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        setattr(compaction, {step!r}, die)
        compaction.main(["--grace-seconds", "0"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=job_environment(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def test_a_kill_at_any_step_loses_nothing_and_the_stream_carries_on_from_the_compacted_log(
    spark: SparkSession, lake: Settings, tmp_path: Path
) -> None:
    settings = lake
    # 12 micro-batches: the log's compaction file at batch 9, two batches after it.
    _produce_days(settings, 12 * PER_TRIGGER, "c")
    job = run_job(settings, timeout=300)
    assert job.returncode == 0, job.stdout + job.stderr
    before = _committed(settings)
    assert sum(before.values()) == len(before) == 12 * PER_TRIGGER
    assert _spark(spark, settings) == before
    assert _folder(settings) == before
    small = _files_per_day(settings)
    assert len(small) == DAYS and min(small.values()) > 3, small

    # Killed after writing the merged files, before anything refers to them: they are orphans,
    # which readers of the log never see.
    _compact_killed_at(settings, "write_retired", tmp_path)
    assert _committed(settings) == before
    assert _spark(spark, settings) == before
    assert len(folder_files(settings, settings.purchases_url)) > sum(small.values())

    # Killed after the log's rewrite (the commit), before the replaced files are deleted.
    _compact_killed_at(settings, "vacuum", tmp_path)
    assert _committed(settings) == before
    assert _spark(spark, settings) == before
    assert _files_per_day(settings) != small

    # A whole run: the orphans of the first kill and the replaced files of the second go.
    results = compact_lake(settings, grace_seconds=0, log=lambda line: None)
    assert results[0].files_after == results[0].files_before  # merged already, by the 2nd try
    after = _files_per_day(settings)
    # One file per day, plus the files of the micro-batches after the log's latest compaction
    # file (at most 9 batches), which the next run merges.
    assert sum(after.values()) < sum(small.values()) / 2, (small, after)
    assert _committed(settings) == before
    assert _spark(spark, settings) == before
    assert _folder(settings) == before
    fs, folder = location(settings, settings.purchases_url)
    assert read_retired(fs, folder) == []
    # A merged file is one row group, not one per small file it replaced.
    listed = committed_files(settings, settings.purchases_url)
    merged = [key for key in listed if "compacted" in key]
    assert merged and all(pq.ParquetFile(fs.open(key)).num_row_groups == 1 for key in merged)

    # The stream goes on: 8 more micro-batches, so Spark writes its next compaction file (batch
    # 19) from the rewritten one; the merged files must stay listed, the replaced ones gone.
    _produce_days(settings, 8 * PER_TRIGGER, "d", days=1)
    job = run_job(settings, timeout=300)
    assert job.returncode == 0, job.stdout + job.stderr
    total = _committed(settings)
    assert sum(total.values()) == len(total) == 20 * PER_TRIGGER
    assert all(total[key] == 1 for key in before)
    assert _spark(spark, settings) == total
    assert _folder(settings) == total


def test_a_running_stream_compacts_when_asked_and_loses_nothing(
    spark: SparkSession, lake: Settings, tmp_path: Path
) -> None:
    settings = lake
    _produce_days(settings, 12 * PER_TRIGGER, "r")
    job = start_job(settings, tmp_path / "stream.log")
    try:
        wait_for(
            lambda: sum(_committed(settings).values()) == 12 * PER_TRIGGER,
            "the first orders to land",
            timeout=180,
        )
        files = sum(_files_per_day(settings).values())
        # Orders keep arriving while the stream compacts at the request.
        _produce_days(settings, 4 * PER_TRIGGER, "s", days=1)
        results = compact_lake(settings, grace_seconds=0, log=lambda line: None)
        assert results[0].merged > 0 and results[0].files_after < files, results
        assert pending_requests(settings) == []
        wait_for(
            lambda: sum(_committed(settings).values()) == 16 * PER_TRIGGER,
            "the orders sent meanwhile to land",
            timeout=180,
        )
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(30)
    log = (tmp_path / "stream.log").read_text()
    assert "compaction: requested" in log, log[-3000:]
    total = _committed(settings)
    assert sum(total.values()) == len(total) == 16 * PER_TRIGGER
    assert _spark(spark, settings) == total
    assert _folder(settings) == total


def _entry(day: str, n: int, size: int) -> dict[str, object]:
    return {
        "path": f"s3a://lake/raw/ingest_date={day}/part-{n}.parquet",
        "size": size,
        "modificationTime": n,
        "action": "add",
    }


def test_bins_hold_each_days_small_files_up_to_the_target_and_skip_the_rest() -> None:
    from app.lake.compaction import Options, plan_bins

    options = Options(target_bytes=100, min_files=3, grace_seconds=0)
    entries = [
        *(_entry("2026-12-01", n, 30) for n in range(7)),  # 210 bytes: bins of 3, 3 (and 1 left)
        *(_entry("2026-12-02", n, 10) for n in range(2)),  # fewer than min_files
        _entry("2026-12-03", 0, 80),  # not small (over half the target)
        *(_entry("2026-12-03", n, 10) for n in range(1, 4)),
    ]
    plan = plan_bins(entries, options)
    assert set(plan) == {
        "s3a://lake/raw/ingest_date=2026-12-01",
        "s3a://lake/raw/ingest_date=2026-12-03",
    }
    assert [len(group) for group in plan["s3a://lake/raw/ingest_date=2026-12-01"]] == [3, 3]
    (day_3,) = plan["s3a://lake/raw/ingest_date=2026-12-03"]
    assert [entry["path"].rsplit("/", 1)[1] for entry in day_3] == [
        "part-1.parquet",
        "part-2.parquet",
        "part-3.parquet",
    ]


def test_a_stream_that_starts_during_a_compaction_asks_to_be_started_again(
    lake: Settings,
) -> None:
    from app.core.errors import EXIT_TRY_AGAIN
    from app.lake.writer_lock import COMPACTION, writer_lock

    compaction = writer_lock(lake, role=COMPACTION)
    compaction.acquire()
    try:
        job = run_job(lake, timeout=120)
    finally:
        compaction.release()
    # Not an error (which would stop `task up`): exit 75, and the watcher starts it again.
    assert job.returncode == EXIT_TRY_AGAIN, job.stdout + job.stderr
    assert "A lake compaction holds the writer lock" in job.stderr
