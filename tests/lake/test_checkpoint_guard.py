"""The checkpoint and the sink log live and die together: a checkpoint in the bucket by default,
a refusal to start when the two disagree, `task lake-reset` removing both, one writer per
checkpoint on S3 too."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from pyspark.sql import SparkSession

from app.core.clients import s3_filesystem
from app.core.config import ROOT, Settings
from app.core.errors import LabError
from app.lake.queries import sinks, start_queries
from app.lake.sink_log import LogState
from app.lake.storage import join_url, location
from app.lake.stream import prepare_sinks
from app.lake.writer_lock import LEASE_NAME, LeaseLost, writer_lock
from tests.lake.helpers import job_environment, make_orders, produce_orders, run_job

HOLD_LEASE = """
import sys
from app.core.config import get_settings
from app.lake.writer_lock import writer_lock
writer_lock(get_settings()).acquire()
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def s3_checkpoint(stream_settings: Settings) -> Settings:
    """This test's scope with its checkpoints in the bucket, beside its lake folders."""
    scope = stream_settings.s3_purchases_prefix.split("/")[0]
    return stream_settings.model_copy(
        update={"spark_checkpoint_dir": f"s3a://{stream_settings.s3_bucket}/{scope}/checkpoints"}
    )


def _run_available_now(spark: SparkSession, settings: Settings) -> None:
    for query in start_queries(spark, settings, available_now=True):
        query.awaitTermination(600)
        assert query.exception() is None, query.exception()


def _lake_order_ids(spark: SparkSession, settings: Settings) -> list[str]:
    rows = spark.read.parquet(settings.purchases_url).select("OrderId").collect()
    return sorted(row["OrderId"] for row in rows)


def _reset(settings: Settings, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.lake.reset", *flags],
        env=job_environment(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_the_default_checkpoint_is_in_the_lake_bucket(lab_services: Settings) -> None:
    settings = lab_services.model_copy(update={"spark_checkpoint_dir": ""})
    assert [sink.checkpoint for sink in sinks(settings)] == [
        f"s3a://{settings.s3_bucket}/checkpoints/purchased_items",
        f"s3a://{settings.s3_bucket}/checkpoints/purchased_items_quarantine",
    ]
    assert join_url("lab/checkpoints/", "purchased_items") == "lab/checkpoints/purchased_items"


@pytest.mark.parametrize(
    ("sink", "planned", "done", "agree"),
    [
        (-1, -1, -1, True),  # nothing yet
        (4, 4, 4, True),  # at rest
        (-1, 0, -1, True),  # the first batch cut short before its sink commit
        (5, 5, 4, True),  # sink committed, then the process died before the checkpoint did
        (4, 5, 4, True),  # a batch cut short before its sink commit
        (7, -1, -1, False),  # the checkpoint was lost: Spark would skip batches 0..7
        (-1, 7, 7, False),  # the lake folder was lost: committed batches are gone
        (9, 5, 5, False),  # the sink log is ahead: another checkpoint wrote it
        (3, 5, 5, False),  # the sink log is behind: restored from an older copy
    ],
)
def test_checkpoint_and_sink_log_agree_only_on_one_history(
    sink: int, planned: int, done: int, agree: bool
) -> None:
    assert LogState(sink=sink, planned=planned, done=done).agree() is agree


def test_s3_checkpoint_lost_is_refused_until_lake_reset_removes_both(
    spark: SparkSession, s3_checkpoint: Settings
) -> None:
    settings = s3_checkpoint
    orders = make_orders(600, "s3cp")
    produce_orders(settings, orders)
    _run_available_now(spark, settings)
    expected = sorted(order.order_id for order in orders)
    assert _lake_order_ids(spark, settings) == expected
    fs = s3_filesystem(settings)
    checkpoint = sinks(settings)[0].checkpoint
    _, checkpoint_key = location(settings, checkpoint)
    assert fs.ls(f"{checkpoint_key}/commits"), "the checkpoint should be in the bucket"

    # The checkpoint is lost, the lake folder is kept: the job refuses, naming both and the fix.
    fs.rm(checkpoint_key, recursive=True)
    with pytest.raises(LabError) as refused:
        prepare_sinks(settings, print)
    message = str(refused.value)
    assert checkpoint in message
    assert join_url(settings.purchases_url, "_spark_metadata") in message
    assert "`task lake-reset`" in message
    job = run_job(settings)
    assert job.returncode == 1
    assert "The checkpoint and the lake disagree" in job.stderr
    assert "Traceback" not in job.stderr + job.stdout

    # lake-reset asks first; with no terminal to ask on it refuses and removes nothing.
    asked = _reset(settings)
    assert asked.returncode == 1
    assert "--yes" in asked.stderr
    assert _lake_order_ids(spark, settings) == expected
    done = _reset(settings, "--yes")
    assert done.returncode == 0, done.stderr
    assert settings.purchases_url in done.stdout
    assert sinks(settings)[1].checkpoint in done.stdout
    assert fs.find(location(settings, settings.purchases_url)[1]) == []

    # Started over, the stream takes every order Kafka holds again, each once.
    prepare_sinks(settings, print)
    _run_available_now(spark, settings)
    assert _lake_order_ids(spark, settings) == expected


def test_one_writer_per_s3_checkpoint(s3_checkpoint: Settings) -> None:
    settings = s3_checkpoint
    # Another process holds the lease (the job on another terminal, say).
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LEASE],
        env=job_environment(settings),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = writer_lock(settings)
        with pytest.raises(LabError, match="Another stream job is running on the checkpoint"):
            lock.acquire()
        job = run_job(settings)
        assert job.returncode == 1
        assert "Another stream job is running on the checkpoint" in job.stderr
        assert f"pid {holder.pid}" in job.stderr
        reset = _reset(settings, "--yes")
        assert reset.returncode == 1
        assert "nothing removed" in reset.stderr

        # A holder that died without letting go (SIGKILL) on this host is taken over at once.
        holder.kill()
        holder.wait(timeout=10)
        lock.acquire()
        lease = join_url(settings.checkpoint_dir, LEASE_NAME)
        fs, key = location(settings, lease)
        assert fs.exists(key)
        with pytest.raises(LabError, match="Another stream job is running on the checkpoint"):
            writer_lock(settings).acquire()
        lock.release()
        assert not fs.exists(key)
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_lapsed_s3_lease_is_taken_over_and_its_old_holder_told(s3_checkpoint: Settings) -> None:
    settings = s3_checkpoint.model_copy(update={"spark_writer_lease_seconds": 5})
    first, second = writer_lock(settings), writer_lock(settings)
    first.acquire()
    taken = time.monotonic()
    try:
        with pytest.raises(LabError, match="Another stream job is running on the checkpoint"):
            second.acquire()
        # The first holder stalls (no renewal): the lease is free once the S3 server's clock (in
        # whole seconds) says it was not renewed for 5 s, and not before.
        while True:
            try:
                second.acquire()
                break
            except LabError:
                assert time.monotonic() - taken < 30, "the lapsed lease was never taken over"
                time.sleep(0.5)
        assert time.monotonic() - taken > 4
        with pytest.raises(LeaseLost, match="was taken over"):
            first.renew()
    finally:
        second.release()
        first.release()
