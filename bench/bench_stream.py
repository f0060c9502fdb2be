"""Benchmark: the purchases stream (`app.lake.stream`) on `local[2]` against the lab's Kafka and S3.

1. Throughput (in this process, its JVM run as the stream's: `--java-options`). A backlog of
   orders (500,000 by default) is produced into a topic of the benchmark's own; then the lab's
   stream (both file-sink queries, trigger availableNow, the settings' maxOffsetsPerTrigger)
   drains it. orders/s = orders / wall time
   from start to both queries done (the JVM start is reported apart). Baseline, same
   run, same backlog, same JVM: Spark copying the messages raw (value bytes + lineage to
   Parquet, one query, no parsing, no validation), i.e. what Kafka -> Spark -> S3 costs before
   the lab adds anything. Both run once first on a smaller backlog (the JIT's warm-up). Beside
   each figure: the JVM's CPU seconds, which other work on a shared machine hardly moves, and
   the load.
2. Freshness at the default trigger (`SPARK_TRIGGER_INTERVAL`, 30 seconds), on the Procfile's
   job (`python -m app.lake`, its own process): orders are POSTed to the ingest API
   (`app.api`, in this process with its real Kafka producer) every second; for each order, the
   time from the start of its POST to the moment its file is in the sink's commit log, i.e.
   readable by Spark or by `committed_files` + pyarrow (polled every 0.5 s). Baseline: what the
   trigger alone implies, about half the interval plus the micro-batch duration.
3. S3 requests per micro-batch, during 2. The local S3 server does not report requests and the
   s3a client's own counters miss the commit log's client (Spark opens it through FileContext),
   so the job's S3 traffic goes through a counting proxy in this process.

    .venv/bin/python bench/bench_stream.py [--orders N] [--freshness-seconds S] [--rate R]

Topics, S3 prefixes and checkpoints are the benchmark's own and are deleted at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pyarrow.parquet as pq
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from app.core.clients import kafka_admin, s3_filesystem
from app.core.config import Settings, get_settings
from app.core.topics import ensure_topics
from app.lake.queries import kafka_messages, sinks, start_queries
from app.lake.schema import PARTITION_COLUMN
from app.lake.session import build_spark_session
from app.lake.sink_log import committed_files
from app.lake.storage import ensure_bucket
from app.lake.stream import STREAM_JAVA_OPTIONS
from app.schemas import PaymentType, Purchase, PurchasedProduct, order_total

MASTER = "local[2]"


def bench_settings(base: Settings, name: str) -> Settings:
    tag = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    return base.model_copy(
        update={
            "topic_purchased_item": f"{tag}-PurchasedItem",
            "s3_purchases_prefix": f"{tag}/raw/purchased_items/",
            "s3_quarantine_prefix": f"{tag}/raw/purchased_items_quarantine/",
            "spark_checkpoint_dir": str(base.lab_home / "bench" / "checkpoints" / tag),
        }
    )


def fake_orders(count: int, seed: int, start: datetime) -> Iterator[Purchase]:
    """Valid orders like the generator's: 1-4 lines from 5,000 products, 100,000 users."""
    rng = random.Random(seed)
    payments = list(PaymentType)
    for n in range(count):
        products = [
            PurchasedProduct(
                product_id=f"P{rng.randrange(5000):05d}",
                item_count=rng.randint(1, 3),
                item_price=round(rng.uniform(1, 500), 2),
                item_discount=rng.choice([0.0, 0.0, 0.1, 0.25]),
            )
            for _ in range(rng.randint(1, 4))
        ]
        yield Purchase(
            session_id=f"S{seed}-{n // 3}",
            timestamp=start + timedelta(milliseconds=n),
            user_id=f"U{rng.randrange(100_000):06d}",
            total_price=order_total(products),
            order_id=f"O{seed}-{n:08d}",
            products=products,
            payment_type=rng.choice(payments),
        )


def produce_backlog(settings: Settings, orders: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
        }
    )
    started = time.perf_counter()
    for order in fake_orders(orders, seed=1, start=datetime.now(UTC)):
        while True:
            try:
                producer.produce(
                    settings.topic_purchased_item,
                    value=order.to_json_bytes(),
                    key=order.user_id.encode(),
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120):
        raise SystemExit("Kafka did not take the backlog within 120 s")
    return time.perf_counter() - started


def jvm_cpu_seconds(spark: SparkSession) -> float:
    """CPU seconds the session's JVM has used (user + system): unlike wall time, hardly moved by
    other work on a shared machine."""
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()  # type: ignore[union-attr]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def batches_of(queries: list[object]) -> int:
    return sum(len(query.recentProgress) for query in queries)  # type: ignore[attr-defined]


def lab_stream(spark: SparkSession, settings: Settings) -> tuple[float, int]:
    started = time.perf_counter()
    queries = start_queries(spark, settings, available_now=True)
    for query in queries:
        query.awaitTermination()
        if query.exception() is not None:
            raise SystemExit(f"query {query.name} failed: {query.exception()}")
    return time.perf_counter() - started, batches_of(queries)


def raw_copy(spark: SparkSession, settings: Settings) -> tuple[float, int]:
    """Baseline: the same messages straight to Parquet, no parsing, no validation, one query."""
    url = f"s3a://{settings.s3_bucket}/{settings.s3_purchases_prefix.rstrip('/')}_raw_copy/"
    started = time.perf_counter()
    query = (
        kafka_messages(spark, settings)
        .select(
            "value",
            "partition",
            "offset",
            "timestamp",
            F.to_date("timestamp").alias(PARTITION_COLUMN),
        )
        .writeStream.format("parquet")
        .partitionBy(PARTITION_COLUMN)
        .option("path", url)
        .option("checkpointLocation", f"{settings.checkpoint_dir}/raw_copy")
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    if query.exception() is not None:
        raise SystemExit(f"raw copy failed: {query.exception()}")
    return time.perf_counter() - started, batches_of([query])


def warm_up(spark: SparkSession, base: Settings, orders: int) -> None:
    """Both jobs once on a small backlog of their own, not timed: the stream job runs for days,
    so its JIT-compiled steady state is the figure, not the JVM's first minute."""
    settings = bench_settings(base, "warmup")
    ensure_topics(settings, [settings.topic_purchased_item])
    produce_backlog(settings, orders)
    try:
        cpu = jvm_cpu_seconds(spark)
        lab_stream(spark, settings)
        raw_copy(spark, settings)
        print(
            f"warm-up (not counted): {orders:,} orders through both jobs, "
            f"JVM {jvm_cpu_seconds(spark) - cpu:.1f} CPU-s"
        )
    finally:
        clean_up(settings)


def throughput(spark: SparkSession, base: Settings, orders: int) -> None:
    settings = bench_settings(base, "backlog")
    ensure_topics(settings, [settings.topic_purchased_item])
    took = produce_backlog(settings, orders)
    print(
        f"backlog: {orders:,} orders produced in {took:.1f} s ({orders / took:,.0f}/s) into "
        f"{base.kafka_partitions} partitions; maxOffsetsPerTrigger "
        f"{settings.spark_max_offsets_per_trigger:,}"
    )
    try:
        cpu = jvm_cpu_seconds(spark)
        took, batches = lab_stream(spark, settings)
        cpu = jvm_cpu_seconds(spark) - cpu
        landed = spark.read.parquet(settings.purchases_url).count()
        print(
            f"lab stream (parse + validate, 2 queries): {orders / took:8,.0f} orders/s "
            f"(target 40,000; {took:.1f} s, {batches} micro-batches, {landed:,} rows landed; "
            f"JVM {cpu:.1f} CPU-s, {orders / cpu:,.0f} orders/CPU-s; {load_average()})"
        )
        lab_took, lab_cpu = took, cpu
        cpu = jvm_cpu_seconds(spark)
        took, batches = raw_copy(spark, settings)
        cpu = jvm_cpu_seconds(spark) - cpu
        print(
            f"baseline raw copy (1 query, no parsing): {orders / took:8,.0f} orders/s "
            f"({took:.1f} s, {batches} micro-batches; JVM {cpu:.1f} CPU-s, "
            f"{orders / cpu:,.0f} orders/CPU-s; {load_average()})"
        )
        print(
            f"  lab stream / raw copy: {lab_took / took:.2f}x the wall time, "
            f"{lab_cpu / cpu:.2f}x the JVM CPU"
        )
        if landed != orders:
            raise SystemExit(f"expected {orders} rows in the lake, found {landed}")
    finally:
        clean_up(settings)


class CountingProxy(ThreadingHTTPServer):
    """A pass-through HTTP proxy in front of the S3 endpoint that counts requests by kind."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        target = urlparse(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)


def request_kind(method: str, path: str, headers: Message) -> str:
    query = parse_qs(urlparse(path).query, keep_blank_values=True)
    if method == "GET":
        return "LIST" if "list-type" in query or urlparse(path).path.count("/") < 2 else "GET"
    if method == "PUT":
        if headers.get("x-amz-copy-source"):
            return "COPY"
        return "multipart part" if "partNumber" in query else "PUT"
    if method == "POST":
        return "bulk DELETE" if "delete" in query else "multipart start/complete"
    return method


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` answered here
    server: CountingProxy
    upstreams = threading.local()

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with self.server.lock:
            self.server.counts[request_kind(self.command, self.path, self.headers)] += 1
        if not hasattr(self.upstreams, "connection"):
            self.upstreams.connection = http.client.HTTPConnection(*self.server.upstream)
        upstream = self.upstreams.connection
        # Host is forwarded unchanged: it is part of the request's SigV4 signature.
        headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response_only(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        content_length = answer.getheader("Content-Length")
        self.send_header(
            "Content-Length", content_length if self.command == "HEAD" else str(len(data))
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per request would drown the figures."""


def freshness(base: Settings, seconds: float, rate: int, log: Path) -> None:
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    settings = bench_settings(base, "fresh")
    ensure_topics(settings, [settings.topic_purchased_item])
    fs = s3_filesystem(settings)
    posted: dict[str, float] = {}
    visible: dict[str, float] = {}
    seen_files: set[str] = set()

    def poll() -> None:
        for key in committed_files(settings, settings.purchases_url):
            if key not in seen_files:
                seen_files.add(key)
                now = time.time()
                ids = pq.read_table(key, columns=["OrderId"], filesystem=fs).column(0)
                for order_id in ids.to_pylist():
                    visible.setdefault(order_id, now)

    proxy = CountingProxy(settings.s3_endpoint_url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    job = start_job(settings, proxy.url, log)
    orders = fake_orders(int(seconds * rate), seed=2, start=datetime.now(UTC))
    try:
        wait_for_line(job, log, "streaming ")
        before, committed_before = proxy.snapshot(), committed_batches(settings)
        with TestClient(create_app(settings)) as api:
            started = time.time()
            for second in range(1, int(seconds) + 1):
                batch = [next(orders) for _ in range(rate)]
                sent = time.time()
                answer = api.post("/PurchasedItems", json=[order.to_wire() for order in batch])
                answer.raise_for_status()
                posted.update(dict.fromkeys((order.order_id for order in batch), sent))
                while time.time() < started + second:
                    poll()
                    time.sleep(0.5)
        deadline = time.time() + 4 * _interval_seconds(settings) + 60
        while len(visible.keys() & posted.keys()) < len(posted) and time.time() < deadline:
            poll()
            time.sleep(0.5)
        requests = proxy.snapshot() - before
        batches = committed_batches(settings) - committed_before
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)
        proxy.shutdown()
        clean_up(settings)
    delays = sorted(visible[key] - posted[key] for key in posted if key in visible)
    missing = len(posted) - len(delays)
    interval = _interval_seconds(settings)
    durations = [
        float(match[1])
        for match in re.finditer(r"not valid orders\) in ([\d.]+) s", log.read_text())
    ]
    batch_time = statistics.median(durations) if durations else 0.0
    print(
        f"freshness at trigger {settings.spark_trigger_interval!r}: {len(posted):,} orders POSTed "
        f"({rate}/s for {seconds:.0f} s), POST -> readable in the bucket: "
        f"p50 {_quantile(delays, 0.5):.1f} s, p95 {_quantile(delays, 0.95):.1f} s, "
        f"max {delays[-1] if delays else float('nan'):.1f} s"
        + (f"; {missing} never seen" if missing else "")
        + f" (target: p95 <= 1.5 x trigger = {1.5 * _interval_seconds(settings):.0f} s)"
    )
    print(
        f"  baseline (trigger alone): ~{interval / 2:.0f} s wait + {batch_time:.1f} s median "
        f"micro-batch = ~{interval / 2 + batch_time:.1f} s p50, "
        f"~{interval * 0.95 + batch_time:.1f} s p95"
    )
    per_batch = ", ".join(f"{kind} {count / batches:.1f}" for kind, count in requests.most_common())
    print(
        f"  S3 requests: {sum(requests.values()) / batches:.1f} per micro-batch ({per_batch}); "
        f"{batches} micro-batches of the 2 queries"
    )


def start_job(settings: Settings, s3_endpoint: str, log: Path) -> subprocess.Popen[bytes]:
    """The Procfile's job on the benchmark's topic and prefixes, S3 traffic via `s3_endpoint`."""
    env = {
        **os.environ,
        "TOPIC_PURCHASED_ITEM": settings.topic_purchased_item,
        "S3_PURCHASES_PREFIX": settings.s3_purchases_prefix,
        "S3_QUARANTINE_PREFIX": settings.s3_quarantine_prefix,
        "SPARK_CHECKPOINT_DIR": settings.checkpoint_dir,
        "S3_ENDPOINT_URL": s3_endpoint,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.lake", "--master", MASTER],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for_line(job: subprocess.Popen[bytes], log: Path, text: str) -> None:
    deadline = time.time() + 180
    while text not in log.read_text(errors="replace"):
        if job.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the stream job did not start; its log: {log}")
        time.sleep(0.5)


def committed_batches(settings: Settings) -> int:
    return sum(
        len([p for p in (Path(sink.checkpoint) / "commits").glob("*") if p.name.isdigit()])
        for sink in sinks(settings)
    )


def _interval_seconds(settings: Settings) -> float:
    amount, unit = settings.spark_trigger_interval.split()
    return float(amount) * {"second": 1, "seconds": 1, "minute": 60, "minutes": 60}[unit]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def clean_up(settings: Settings) -> None:
    fs = s3_filesystem(settings)
    top = f"{settings.s3_bucket}/{settings.s3_purchases_prefix.split('/')[0]}"
    if fs.exists(top):
        fs.rm(top, recursive=True)
    # The client must outlive its futures: a collected client cancels them (`_DESTROY`).
    admin = kafka_admin(settings)
    for deleted in admin.delete_topics([settings.topic_purchased_item]).values():
        deleted.result()
    shutil.rmtree(settings.checkpoint_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=500_000, help="backlog size")
    parser.add_argument("--warm-up", type=int, default=100_000, help="warm-up backlog size")
    parser.add_argument(
        "--freshness-seconds", type=float, default=180.0, help="0 skips the freshness run"
    )
    parser.add_argument("--rate", type=int, default=20, help="orders POSTed per second")
    parser.add_argument(
        "--java-options",
        default=STREAM_JAVA_OPTIONS,
        help=f"the JVM's options in part 1 (default: the stream's, {STREAM_JAVA_OPTIONS!r}; "
        "'' for the JVM's defaults, with its optimising compiler)",
    )
    args = parser.parse_args()
    base = get_settings()
    ensure_bucket(base)
    started = time.perf_counter()
    spark = build_spark_session(
        base, "bench-stream", kafka=True, master=MASTER, java_options=args.java_options
    )
    took = time.perf_counter() - started
    print(
        f"Spark {spark.version} on {MASTER} (JVM options: {args.java_options or 'defaults'}): "
        f"session (JVM + jars) up in {took:.1f} s"
    )
    try:
        warm_up(spark, base, args.warm_up)
        throughput(spark, base, args.orders)
    finally:
        spark.stop()
    if args.freshness_seconds <= 0:
        return
    log = base.lab_home / "bench" / "bench_stream_job.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    freshness(base, args.freshness_seconds, args.rate, log)


if __name__ == "__main__":
    main()
