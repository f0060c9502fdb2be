"""The S3 writer lease is a fence: each renewal changes the lease's ETag, so a takeover decided
on what a holder wrote before its last renewal fails; a holder that loses the lease kills its JVM
at once; and the new writer's clean-up keeps the files a paused former writer may still commit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from app.core.config import Settings
from app.core.topics import ensure_topics
from app.lake.queries import sinks
from app.lake.sink_log import committed_files, folder_files, log_state, orphan_files
from app.lake.storage import join_url, location
from app.lake.writer_lock import LEASE_NAME, writer_lock
from tests.lake.helpers import arrow_orders, make_orders, produce_orders, start_job, wait_for


@pytest.fixture
def s3_checkpoint(stream_settings: Settings) -> Settings:
    """This test's scope with its checkpoints in the bucket, a 5 s lease."""
    scope = stream_settings.s3_purchases_prefix.split("/")[0]
    return stream_settings.model_copy(
        update={
            "spark_checkpoint_dir": f"s3a://{stream_settings.s3_bucket}/{scope}/checkpoints",
            "spark_writer_lease_seconds": 5,
        }
    )


def test_a_renewal_changes_the_etag_so_a_takeover_seen_before_it_fails(
    s3_checkpoint: Settings,
) -> None:
    settings = s3_checkpoint
    holder = writer_lock(settings)
    holder.acquire()
    try:
        fs, key = location(settings, join_url(settings.checkpoint_dir, LEASE_NAME))
        bucket, name = key.split("/", 1)
        seen = fs.call_s3("head_object", Bucket=bucket, Key=name)["ETag"]
        # The holder renews after a third of the time-out; a job that judged the lease lapsed
        # from what it saw before that renewal must not get it.
        time.sleep(settings.spark_writer_lease_seconds / 3 + 0.2)
        holder.renew()
        with pytest.raises(OSError, match=r"(?i)pre-?condition"):
            fs.call_s3("put_object", Bucket=bucket, Key=name, Body=b"{}", IfMatch=seen)
    finally:
        holder.release()


def _lease(settings: Settings) -> dict[str, str]:
    """The lease's holder as S3 holds it ({} when there is none)."""
    fs, key = location(settings, join_url(settings.checkpoint_dir, LEASE_NAME))
    bucket, name = key.split("/", 1)
    try:
        head = fs.call_s3("head_object", Bucket=bucket, Key=name)
    except FileNotFoundError:
        return {}
    now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
    age = (now - head["LastModified"]).total_seconds()
    return {**head["Metadata"], "age": str(age)}


def _writing(settings: Settings) -> list[str]:
    """The files of the purchases query's micro-batch in flight (planned, not committed) that
    are in the folder already; [] when no batch is in flight."""
    sink = sinks(settings)[0]
    state = log_state(settings, sink.url, sink.checkpoint)
    if state.planned <= max(state.done, state.sink):
        return []
    return orphan_files(settings, sink.url)


def _ended(job: subprocess.Popen[bytes], log: Path) -> bool:
    assert job.poll() is None, log.read_text()[-3000:]
    return False


def test_a_paused_writer_whose_lease_was_taken_over_is_killed_and_commits_nothing(
    request: pytest.FixtureRequest, s3_checkpoint: Settings, tmp_path: Path
) -> None:
    # Eight partitions on two cores: a micro-batch writes its files in waves, so there is time
    # to pause the job between its first file and its commit.
    settings = s3_checkpoint.model_copy(
        update={
            "topic_purchased_item": f"{s3_checkpoint.topic_purchased_item}-8",
            "kafka_partitions": 8,
            "spark_max_offsets_per_trigger": 3000,
        }
    )
    ensure_topics(settings, [settings.topic_purchased_item])
    orders = make_orders(6_000, "fence")
    produce_orders(settings, orders)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    first = start_job(settings, first_log)
    second = None
    try:
        wait_for(
            lambda: (first.poll() is None and bool(_writing(settings))) or _ended(first, first_log),
            "a micro-batch writing",
            timeout=240,
            every=0.05,
        )
        os.killpg(first.pid, signal.SIGSTOP)  # the whole job: Python, its JVM, its workers
        in_flight = _writing(settings)
        assert in_flight, "the pause should have caught a micro-batch writing its files"

        # Once the paused job's lease has lapsed, a second job takes the checkpoint over. Its
        # clean-up must keep the paused job's files: that job's JVM may still commit them.
        wait_for(lambda: float(_lease(settings)["age"]) > 5, "the lease to lapse", timeout=30)
        second = start_job(settings, second_log, "--available-now")
        wait_for(lambda: _lease(settings).get("pid") == str(second.pid), "the takeover")
        wait_for(lambda: "file(s) that no commit" in second_log.read_text(), "the clean-up")
        assert set(in_flight) <= set(folder_files(settings, settings.purchases_url))

        # Resumed, the first job learns it lost the lease and kills its JVM before it commits.
        os.killpg(first.pid, signal.SIGCONT)
        resumed = time.monotonic()
        assert first.wait(timeout=30) == 1, first_log.read_text()[-3000:]
        assert time.monotonic() - resumed < 5
        said = first_log.read_text()
        assert "killed its JVM at once" in said, said[-3000:]
        assert f"pid {second.pid} on" in said
        assert "Traceback" not in said

        assert second.wait(timeout=300) == 0, second_log.read_text()[-3000:]
    finally:
        for job in (first, second):
            if job is not None and job.poll() is None:
                os.killpg(job.pid, signal.SIGCONT)
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(timeout=30)

    # Every order once, for pyarrow over the commit log and for Spark; no committed file is
    # missing, none of the paused job's files was committed, and they are gone from the folder.
    committed = committed_files(settings, settings.purchases_url)
    present = set(folder_files(settings, settings.purchases_url))
    assert set(committed) == present
    assert not set(in_flight) & set(committed)
    expected = sorted(order.order_id for order in orders)
    assert sorted(str(row["OrderId"]) for row in arrow_orders(settings)) == expected
    spark: SparkSession = request.getfixturevalue("spark")
    lake = spark.read.parquet(settings.purchases_url).select("OrderId").collect()
    assert sorted(row["OrderId"] for row in lake) == expected
