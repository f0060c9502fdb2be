"""The Procfile's Spark job as a process: SIGTERM stops it within honcho's grace period, SIGKILL in
the middle of a micro-batch loses nothing, and after a restart every order is in the lake once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession

from app.core.config import ROOT, Settings
from app.lake.queries import sinks
from tests.lake.helpers import arrow_orders, arrow_rows, make_orders, produce_orders, wait_for

SCRIPT = ROOT / "spark" / "stream_purchases.py"
ORDERS = 9_000


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "TOPIC_PURCHASED_ITEM": settings.topic_purchased_item,
        "S3_PURCHASES_PREFIX": settings.s3_purchases_prefix,
        "S3_QUARANTINE_PREFIX": settings.s3_quarantine_prefix,
        "SPARK_CHECKPOINT_DIR": settings.checkpoint_dir,
        "SPARK_TRIGGER_INTERVAL": settings.spark_trigger_interval,
        "SPARK_MAX_OFFSETS_PER_TRIGGER": str(settings.spark_max_offsets_per_trigger),
    }


def _job(settings: Settings, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    """`spark/stream_purchases.py` in its own process group, as honcho runs it."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), "--master", "local[2]", *flags],
            env=_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _batches(checkpoint: str, log: str) -> set[int]:
    folder = Path(checkpoint) / log
    return {int(p.name) for p in folder.glob("*") if p.name.isdigit()} if folder.exists() else set()


def _in_flight(settings: Settings) -> bool:
    """A micro-batch of the purchases query is planned (offsets logged) but not committed."""
    checkpoint = sinks(settings)[0].checkpoint
    return bool(_batches(checkpoint, "offsets") - _batches(checkpoint, "commits"))


def _committed(settings: Settings) -> int:
    return len(_batches(sinks(settings)[0].checkpoint, "commits"))


def test_sigterm_then_sigkill_mid_batch_then_restart_keeps_every_order_once(
    spark: SparkSession, stream_settings: Settings, tmp_path: Path
) -> None:
    settings = stream_settings.model_copy(update={"spark_max_offsets_per_trigger": 1000})
    log = tmp_path / "stream.log"
    orders = make_orders(ORDERS, "r")
    produce_orders(settings, orders)

    # 1. SIGTERM to the whole group, as honcho stops it: exit 0 within honcho's 5 s grace.
    job = _job(settings, log)
    wait_for(lambda: _committed(settings) >= 1, "the first committed micro-batch", timeout=240)
    os.killpg(job.pid, signal.SIGTERM)
    signalled = time.monotonic()
    assert job.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert time.monotonic() - signalled < 5
    assert "SIGTERM: stopping the queries" in log.read_text()
    assert "Traceback" not in log.read_text()
    assert 0 < len(arrow_orders(settings)) < ORDERS
    resumed_from = _committed(settings)

    # 2. SIGKILL to the group while a micro-batch is being written: no goodbye at all.
    job = _job(settings, log)
    wait_for(lambda: _committed(settings) > resumed_from, "progress after the restart")
    # Meanwhile a second job on the same checkpoint is refused, not run beside it.
    second = subprocess.run(
        [sys.executable, str(SCRIPT), "--available-now"],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert second.returncode == 1
    assert "Another stream job is running on the checkpoint" in second.stderr
    wait_for(lambda: _in_flight(settings), "a micro-batch in flight", timeout=60)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=30)
    assert _in_flight(settings), "the kill should have cut a micro-batch short"
    assert len(arrow_orders(settings)) < ORDERS

    # 3. Restart, take everything available, exit.
    job = _job(settings, log, "--available-now")
    assert job.wait(timeout=600) == 0, log.read_text()[-3000:]

    lake = spark.read.parquet(settings.purchases_url)
    expected = sorted(order.order_id for order in orders)
    assert sorted(row["OrderId"] for row in lake.select("OrderId").collect()) == expected
    assert sorted(str(row["OrderId"]) for row in arrow_orders(settings)) == expected
    assert arrow_rows(settings, settings.purchases_quarantine_url) == []


def test_a_missing_bucket_is_reported_in_one_sentence(stream_settings: Settings) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--available-now"],
        env={
            **os.environ,
            "TOPIC_PURCHASED_ITEM": stream_settings.topic_purchased_item,
            "S3_BUCKET": "no-such-bucket",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "Bucket no-such-bucket does not exist" in result.stderr
    assert "Run `task infra-up`" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert time.monotonic() - started < 60
