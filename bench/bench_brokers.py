"""Benchmark: the ingest API (and the stream) on one Kafka broker and on a three-node cluster.

One run, two spare clusters of the lab's jars on free ports (same heap, same machine): one
broker (replication factor 1, the baseline) and three nodes (replication factor 3,
`min.insync.replicas=2`, acks=all waits for two copies). Against each, with the measuring
functions of `bench_api.py`:

1. the raw producer with the API's settings (records/s);
2. `PUT /SendEvent` in a closed loop on many connections (requests/s, p50, p99);
3. `PUT /SendEvent` at a fixed 1,000 requests/s (p50, p99);

then, on the three-node cluster, what a broker loss costs: client threads send events while
the leader of a partition gets SIGKILL and is started again (`tests/broker_loss.py`): the time
until acknowledgements resume, the refused requests, the time until every replica is in sync.
With `--stream-orders N` (0 skips it) the stream's throughput (`bench_stream.throughput`) runs
against both too. Every three-broker figure is printed next to the one-broker one.

    .venv/bin/python bench/bench_brokers.py [--seconds 8] [--connections 64] [--stream-orders 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_api import (
    FIXED_RATE,
    LoadResult,
    build_records,
    free_port,
    http_request,
    percentile,
    raw_produce,
    run_load,
)

from app.core.config import Settings, get_settings
from tests.broker_loss import BrokerLoss, lose_a_leader, serving_api
from tests.support import spare_kafka_cluster


@dataclass
class Figures:
    brokers: int
    raw_events_per_second: float
    closed: LoadResult
    fixed: LoadResult
    loss: BrokerLoss | None = None


def measure(base: Settings, brokers: int, args: argparse.Namespace) -> Figures:
    tag = f"bench-brokers-{brokers}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    with spare_kafka_cluster(base, tag, brokers, api_port=free_port()) as nodes:
        settings = nodes[0].settings
        print(f"  {brokers} broker(s) up in {time.monotonic() - started:.0f} s", flush=True)
        events, _ = build_records(events=20_000, orders=1)
        records = [(e.user_id.encode(), e.to_json_bytes()) for e in events]
        requests = [http_request("PUT", "/SendEvent", value) for _, value in records]
        raw, _ = raw_produce(settings, settings.topic_purchased_item, records * 5)
        pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
        try:
            with serving_api(settings, base.lab_home / "logs" / f"{tag}-api.log"):
                port, seconds = settings.api_port, args.seconds
                pool.submit(run_load, port, requests, 8, 2.0).result()  # warm-up
                closed = pool.submit(run_load, port, requests, args.connections, seconds).result()
                fixed = pool.submit(run_load, port, requests, 64, seconds, FIXED_RATE).result()
                loss = lose_a_leader(settings, nodes) if brokers > 1 else None
        finally:
            pool.shutdown()
        if args.stream_orders:
            stream_throughput(settings, args.stream_orders)
    return Figures(brokers, raw, closed, fixed, loss)


def stream_throughput(settings: Settings, orders: int) -> None:
    from bench_stream import MASTER, throughput

    from app.lake.session import build_spark_session
    from app.lake.storage import ensure_bucket

    ensure_bucket(settings)
    spark = build_spark_session(settings, "bench-brokers", kafka=True, master=MASTER)
    try:
        print(f"  stream on {settings.kafka_brokers} broker(s):", flush=True)
        throughput(spark, settings, orders)
    finally:
        spark.stop()


def compare(name: str, three: float, one: float, unit: str, digits: int = 0) -> str:
    return (
        f"  {name:<34} 3 brokers {three:>10,.{digits}f} {unit:<6} "
        f"1 broker {one:>10,.{digits}f} {unit:<6} ({three / one:.0%} of it)"
    )


def report(one: Figures, three: Figures) -> None:
    raw = (three.raw_events_per_second, one.raw_events_per_second)
    print(compare("raw producer (acks=all)", *raw, "rec/s"))
    for phase, a, b in (
        ("closed loop", three.closed, one.closed),
        (f"fixed {FIXED_RATE:,}/s", three.fixed, one.fixed),
    ):
        print(compare(f"PUT /SendEvent {phase}", a.ok / a.seconds, b.ok / b.seconds, "req/s"))
        for share in (0.5, 0.99):
            label = f"  p{share * 100:g}"
            latency = (percentile(a.latencies, share), percentile(b.latencies, share))
            print(compare(label, *latency, "ms", 1))
    statuses = {
        n: dict(f.closed.statuses + f.fixed.statuses) for n, f in (("3", three), ("1", one))
    }
    print(f"  answers by status: 3 brokers {statuses['3']}, 1 broker {statuses['1']}")
    if three.loss is not None:
        print(f"  broker loss (SIGKILL of a leader, under load): {three.loss.summary()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--connections", type=int, default=64, help="closed-loop connections")
    parser.add_argument("--stream-orders", type=int, default=0, help="stream backlog (0: skip)")
    args = parser.parse_args()
    base = get_settings()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"bench_brokers: {os.cpu_count()} cores, load average {load} at start")
    one = measure(base, 1, args)
    three = measure(base, 3, args)
    report(one, three)
    return 0


if __name__ == "__main__":
    sys.exit(main())
