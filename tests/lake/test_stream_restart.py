"""The Procfile's Spark job as a process: SIGTERM stops it within honcho's grace period, SIGKILL in
the middle of a micro-batch loses nothing, and after a restart every order is in the lake once,
for Spark, for readers of the commit log and for a plain reader of the folder alike."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pyspark.sql import SparkSession

from app.core.config import Settings
from app.core.topics import ensure_topics
from app.lake.queries import sinks
from app.lake.sink_log import orphan_files
from tests.lake.helpers import (
    arrow_orders,
    arrow_rows,
    folder_order_ids,
    make_orders,
    produce_orders,
    run_job,
    start_job,
    wait_for,
)

ORDERS = 16_000


def _batches(checkpoint: str, log: str) -> set[int]:
    folder = Path(checkpoint) / log
    return {int(p.name) for p in folder.glob("*") if p.name.isdigit()} if folder.exists() else set()


def _in_flight(settings: Settings) -> bool:
    """A micro-batch of the purchases query is planned (offsets logged) but not committed."""
    checkpoint = sinks(settings)[0].checkpoint
    return bool(_batches(checkpoint, "offsets") - _batches(checkpoint, "commits"))


def _committed(settings: Settings) -> int:
    return len(_batches(sinks(settings)[0].checkpoint, "commits"))


def _writing(settings: Settings) -> bool:
    """A micro-batch is in flight and some of its files are in the folder already."""
    return _in_flight(settings) and bool(orphan_files(settings, settings.purchases_url))


def test_sigterm_then_sigkill_mid_batch_then_restart_keeps_every_order_once(
    spark: SparkSession, stream_settings: Settings, tmp_path: Path
) -> None:
    # Eight partitions on two cores: a micro-batch writes its files in four waves, so there is
    # time to see some of them land before the batch commits.
    settings = stream_settings.model_copy(
        update={
            "topic_purchased_item": f"{stream_settings.topic_purchased_item}-8",
            "kafka_partitions": 8,
            "spark_max_offsets_per_trigger": 4000,
        }
    )
    ensure_topics(settings, [settings.topic_purchased_item])
    log = tmp_path / "stream.log"
    orders = make_orders(ORDERS, "r")
    produce_orders(settings, orders)

    # 1. SIGTERM to the whole group, as honcho stops it: exit 0 within honcho's 5 s grace.
    # (Small batches here: a stop waits for the tasks of the batch in flight to be killed.)
    job = start_job(settings.model_copy(update={"spark_max_offsets_per_trigger": 1000}), log)
    wait_for(lambda: _committed(settings) >= 1, "the first committed micro-batch", timeout=240)
    os.killpg(job.pid, signal.SIGTERM)
    signalled = time.monotonic()
    assert job.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert time.monotonic() - signalled < 5
    assert "SIGTERM: stopping the queries" in log.read_text()
    assert "Traceback" not in log.read_text()
    assert 0 < len(arrow_orders(settings)) < ORDERS
    resumed_from = _committed(settings)

    # 1b. A stop that outlasts SPARK_STOP_SECONDS (forced here: 10 ms) kills the JVM and exits 0
    # all the same, well within the grace, without a word from the dying JVM's callers.
    quick = {"spark_max_offsets_per_trigger": 1000, "spark_stop_seconds": 0.01}
    job = start_job(settings.model_copy(update=quick), log)
    wait_for(lambda: _committed(settings) > resumed_from, "progress after the restart", timeout=240)
    before = len(log.read_text())
    os.killpg(job.pid, signal.SIGTERM)
    signalled = time.monotonic()
    assert job.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert time.monotonic() - signalled < 5
    after = log.read_text()[before:]
    assert "the stop took more than 0.01 s: killed the JVM" in after
    assert "Traceback" not in after
    resumed_from = _committed(settings)

    # 2. SIGKILL to the group while a micro-batch is writing its files: no goodbye at all.
    job = start_job(settings, log)
    wait_for(lambda: _committed(settings) > resumed_from, "progress after the restart")
    # Meanwhile a second job on the same checkpoint is refused, not run beside it.
    second = run_job(settings)
    assert second.returncode == 1
    assert "Another stream job is running on the checkpoint" in second.stderr
    wait_for(lambda: _writing(settings), "files of a micro-batch in flight", timeout=90, every=0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=30)
    assert _in_flight(settings), "the kill should have cut a micro-batch short"
    cut_short = orphan_files(settings, settings.purchases_url)
    assert cut_short, "the attempt cut short should have left files in the folder"
    assert len(folder_order_ids(settings)) > len(arrow_orders(settings))

    # 3. Restart, take everything available, exit: the files no commit lists are gone first.
    job = start_job(settings, log, "--available-now")
    assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert f"removed {len(cut_short)} file(s) that no commit" in log.read_text()
    assert orphan_files(settings, settings.purchases_url) == []

    lake = spark.read.parquet(settings.purchases_url)
    expected = sorted(order.order_id for order in orders)
    assert sorted(row["OrderId"] for row in lake.select("OrderId").collect()) == expected
    assert sorted(str(row["OrderId"]) for row in arrow_orders(settings)) == expected
    assert sorted(folder_order_ids(settings)) == expected
    assert arrow_rows(settings, settings.purchases_quarantine_url) == []


def test_a_missing_bucket_is_reported_in_one_sentence(stream_settings: Settings) -> None:
    started = time.monotonic()
    result = run_job(stream_settings.model_copy(update={"s3_bucket": "no-such-bucket"}))
    assert result.returncode == 1
    assert "Bucket no-such-bucket does not exist" in result.stderr
    assert "Run `task infra-up`" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert time.monotonic() - started < 60
