"""The stream rides out a Kafka outage: the job keeps running while its broker is away, says so
once, and the orders sent after the broker is back land in the lake, each once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from app.core.config import Settings
from tests.lake.helpers import (
    arrow_orders,
    folder_order_ids,
    make_orders,
    produce_orders,
    start_job,
    wait_for,
)
from tests.support import spare_kafka

OUTAGE_SECONDS = 20
STOPPED = "the queries failed while it is away"


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


def test_the_stream_rides_out_a_kafka_outage_and_lands_later_orders_once(
    stream_settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "stream.log"
    tag = stream_settings.topic_purchased_item.removesuffix("-PurchasedItem")
    with spare_kafka(stream_settings, tag) as broker:
        # Short Kafka time-outs: the queries fail within the outage, so the restart is tested
        # too, not only Spark's own waiting.
        settings = broker.settings.model_copy(update={"spark_kafka_timeout_seconds": 3})
        before, after = make_orders(300, "before"), make_orders(300, "after")
        produce_orders(settings, before)
        job = start_job(settings, log)
        try:
            wait_for(
                lambda: len(arrow_orders(settings)) == len(before), "the first orders", timeout=300
            )
            broker.stop()
            outage_started = time.monotonic()
            while time.monotonic() - outage_started < OUTAGE_SECONDS or STOPPED not in _text(log):
                assert job.poll() is None, _text(log)[-3000:]
                assert time.monotonic() - outage_started < 120, "the queries never failed"
                time.sleep(1)
            broker.start()
            produce_orders(settings, after)
            wait_for(
                lambda: len(arrow_orders(settings)) == len(before) + len(after),
                "the orders sent after the outage",
                timeout=180,
            )
            assert job.poll() is None, _text(log)[-3000:]
        finally:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(timeout=60)
    assert job.returncode == 0, _text(log)[-3000:]
    text = _text(log)
    assert text.count("does not answer") == 1, text[-3000:]
    assert text.count(STOPPED) == 1
    assert text.count("answer again after") == 1
    assert "Traceback" not in text
    expected = sorted(order.order_id for order in before + after)
    assert sorted(folder_order_ids(settings)) == expected
    assert sorted(str(row["OrderId"]) for row in arrow_orders(settings)) == expected
