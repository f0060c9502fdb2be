"""The stream on a Spark standalone cluster: the executors write the lake, and when the worker
(with its executors) is killed in the middle of a micro-batch and started again, the batch is
re-run on the new executor and every order is in the lake exactly once."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed

from app.core.config import Settings
from app.core.topics import ensure_topics
from app.lake.queries import sinks
from app.lake.sink_log import log_state, orphan_files
from app.lake.storage import ensure_bucket
from tests.lake.helpers import (
    arrow_orders,
    arrow_rows,
    job_environment,
    make_orders,
    produce_orders,
    wait_for,
)
from tests.support import (
    cluster_processes,
    make_isolated_settings,
    remove_isolated,
    spare_spark_cluster,
    start_group,
    stop_group,
)

# One micro-batch per query takes them all: the kill cuts it short, the re-run commits it.
ORDERS = 2000


def _in_flight(settings: Settings) -> bool:
    """A micro-batch of the purchases query is planned (offsets logged) but not committed."""
    sink = sinks(settings)[0]
    state = log_state(settings, sink.url, sink.checkpoint)
    return state.planned > state.done


def _writing(settings: Settings) -> bool:
    """A micro-batch is in flight and some of its files are in the folder already."""
    return _in_flight(settings) and bool(orphan_files(settings, settings.purchases_url))


def test_worker_killed_mid_batch_then_restarted_keeps_every_order_once(
    lab_services: Settings, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:10]
    isolated = make_isolated_settings(lab_services, tag)
    # Eight partitions on the application's one core: a micro-batch writes its files in eight
    # waves, so there is time to see some land before it commits. The checkpoint is on S3, as
    # on a real cluster (where the driver's disk is not the executors').
    settings = isolated.model_copy(
        update={
            "kafka_partitions": 8,
            "spark_trigger_interval": "1 second",
            "spark_max_offsets_per_trigger": ORDERS,
            "spark_checkpoint_dir": f"s3a://{isolated.s3_bucket}/test-{tag}/checkpoints",
        }
    )
    ensure_topics(settings, [settings.topic_purchased_item])
    ensure_bucket(settings)
    try:
        _kill_and_restart_the_worker(settings, tag, tmp_path / "stream.log")
    finally:
        remove_isolated(settings)


def _kill_and_restart_the_worker(settings: Settings, tag: str, log: Path) -> None:
    orders = make_orders(ORDERS, "c")
    produce_orders(settings, orders)
    with spare_spark_cluster(settings, tag) as (master, worker):
        assert master.start() == "already running"  # `spark-cluster-up` twice is harmless
        on_cluster = settings.model_copy(update={"spark_master": master.settings.spark_cluster_url})
        job = start_group([sys.executable, "-m", "app.lake"], job_environment(on_cluster), log)
        try:
            # 1. The executor on the worker writes the batch (standalone drivers run no tasks).
            wait_for(lambda: _writing(settings), "files of a micro-batch in flight", 300, 0.1)
            assert worker.executors(), "files written but the worker runs no executor"
            # 2. The worker and its executors die at once, the batch half written.
            pid = worker.pid()
            doomed = cluster_processes([worker])
            assert pid is not None and [p for p in doomed if p.pid != pid], "no executor JVM"
            os.killpg(pid, signal.SIGKILL)
            # Until its last thread exits, a killed JVM still holds its ports.
            assert not psutil.wait_procs(doomed, timeout=60)[1], "JVMs alive after SIGKILL"
            assert _in_flight(settings), "the kill should have cut a micro-batch short"
            assert job.poll() is None, log.read_text()[-3000:]
            # 3. A new worker: the master gives the waiting application a new executor, which
            # re-runs the batch from its logged offsets; then the rest of the topic follows.
            worker.start()
            wait_for(lambda: len(arrow_orders(settings)) >= ORDERS, "every order", 420, 1)
            assert worker.executors()
        finally:
            stop_group(job)
        assert job.returncode == 0, log.read_text()[-3000:]

    output = log.read_text()
    assert "Traceback" not in output, output[-3000:]
    expected = sorted(order.order_id for order in orders)
    assert sorted(str(row["OrderId"]) for row in arrow_orders(settings)) == expected
    assert arrow_rows(settings, settings.purchases_quarantine_url) == []
