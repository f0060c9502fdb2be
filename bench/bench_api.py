"""Benchmark: the ingest API against the real broker, next to the raw producer (the baseline).

Starts the API as the lab does minus live reload (`python -m app.api --no-reload`: uvicorn,
`API_WORKERS` server processes (default one per core), uvloop and httptools) on a free port with
topics of its own, and measures in one run:

1. baseline: the same records produced straight into the broker by confluent-kafka with the
   API's producer settings, for events and for orders (records/s);
2. `PUT /SendEvent`, closed loop on many keep-alive connections (`--connections`, then four
   times as many: with few, each waits out the producer's linger and the broker's answer, and
   the rate is bound by that latency, not by the API's CPU): requests/s, p50, p99;
3. `PUT /SendEvent` at a fixed 1,000 requests/s (open loop; latency counted from each request's
   scheduled time, so queueing behind a slow answer is not hidden): p50, p99;
4. `POST /PurchasedItems` with 1,000 orders per request: orders/s;
5. one client probing `GET /health` and `PUT /SendEvent` in turn, first alone, then while two
   clients send junk bodies of the largest accepted size back to back (an object of unknown
   keys, the costliest refusal): each probe's p50 and p99, and the API's event-loop lag.

The load comes from a separate process speaking raw HTTP/1.1 over asyncio streams (uvloop): an
HTTP client library would spend more CPU than the API under test. Finally it checks that Kafka
holds exactly the records the API acknowledged, prints the figures next to the targets and
the baseline, and deletes its topics. Each row also gives the API's CPU per request or order
(all its processes, from psutil): on a machine shared with other work, a steadier figure than
the rate, and the load average when the phase ended.

    .venv/bin/python bench/bench_api.py [--seconds 8] [--connections 64] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import httpx
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

# Run as a script from anywhere: the repository root holds the `app` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.api.producer import producer_config
from app.core.config import ROOT, Settings, get_settings
from app.core.topics import ensure_topics
from app.generator.crowd import Crowd
from app.schemas import Purchase, UserEvent

TARGET_EVENTS_PER_SECOND = 8_000
TARGET_ORDERS_PER_SECOND = 100_000
TARGET_P99_MS = 25.0
TARGET_STALL_P99_MS = 100.0
FIXED_RATE = 1_000
ORDERS_PER_REQUEST = 1_000
WIDE = 4  # the second closed-loop phase has this many times the connections


# ----------------------------------------------------------------------------- records


def build_records(events: int, orders: int) -> tuple[list[UserEvent], list[Purchase]]:
    """Generator records: `events` events and `orders` orders with distinct OrderIds."""
    crowd = Crowd(seed=2026)
    now = datetime.now(UTC)
    built_events: list[UserEvent] = []
    built_orders: list[Purchase] = []
    while len(built_events) < events or not built_orders:
        for session in crowd.tick(now, 500):
            built_events += session.events
            built_orders += session.purchases
    # Orders are costly to simulate; copies with their own OrderId are as good here.
    copies = [
        built_orders[i % len(built_orders)].model_copy(update={"order_id": f"bench-{i}"})
        for i in range(orders)
    ]
    return built_events[:events], copies


def http_request(method: str, path: str, body: bytes) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# ----------------------------------------------------------------------------- load process


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of 2xx answers, in seconds
    statuses: Counter[int] = field(default_factory=Counter)
    cpu_seconds: float = 0.0  # CPU the load process itself used

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request on a keep-alive connection and read the whole answer; its status."""
    writer.write(request)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def _load(
    port: int, requests: list[bytes], connections: int, seconds: float, rate: float | None
) -> LoadResult:
    """Closed loop (`rate` None: each connection sends as soon as answered) or open loop."""
    result = LoadResult(seconds=seconds)
    started = time.perf_counter()
    deadline = started + seconds
    counter = iter(range(10**12))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                index = next(counter)
                if rate is None:
                    scheduled = time.perf_counter()
                else:
                    scheduled = started + index / rate
                    if scheduled > time.perf_counter():
                        await asyncio.sleep(scheduled - time.perf_counter())
                if scheduled >= deadline:
                    return
                status = await _exchange(reader, writer, requests[index % len(requests)])
                result.statuses[status] += 1
                if 200 <= status < 300:
                    result.latencies.append(time.perf_counter() - scheduled)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    result.seconds = time.perf_counter() - started
    return result


def run_load(
    port: int, requests: list[bytes], connections: int, seconds: float, rate: float | None = None
) -> LoadResult:
    """Entry point of the load process."""
    import uvloop

    cpu = time.process_time()
    result = uvloop.run(_load(port, requests, connections, seconds, rate))
    result.cpu_seconds = time.process_time() - cpu
    return result


async def _probe(
    port: int, probes: dict[str, bytes], junk: list[bytes], seconds: float
) -> tuple[dict[str, list[float]], Counter[str]]:
    """One client sends each probe request in turn (10 ms apart) while one client per `junk`
    body sends it back to back: the probes' latencies and all answers (`route status`)."""
    stop = asyncio.Event()
    statuses: Counter[str] = Counter()
    latencies: dict[str, list[float]] = {name: [] for name in probes}

    async def send_junk(request: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not stop.is_set():
                statuses[f"junk {await _exchange(reader, writer, request)}"] += 1
        finally:
            writer.close()

    async def probe() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        deadline = time.perf_counter() + seconds
        try:
            while time.perf_counter() < deadline:
                for name, request in probes.items():
                    started = time.perf_counter()
                    statuses[f"{name} {await _exchange(reader, writer, request)}"] += 1
                    latencies[name].append(time.perf_counter() - started)
                await asyncio.sleep(0.01)
        finally:
            writer.close()
            stop.set()

    senders = [asyncio.create_task(send_junk(request)) for request in junk]
    await asyncio.sleep(0.5 if junk else 0)  # the junk is on its way
    await probe()
    await asyncio.gather(*senders)
    return latencies, statuses


def run_probe(
    port: int, probes: dict[str, bytes], junk: list[bytes], seconds: float
) -> tuple[dict[str, list[float]], Counter[str]]:
    """Entry point of the load process for the stall phases."""
    import uvloop

    return uvloop.run(_probe(port, probes, junk, seconds))


# ----------------------------------------------------------------------------- API process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_api(settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "API_PORT": str(settings.api_port),
        "API_WORKERS": str(settings.api_workers),
        "TOPIC_USER_EVENTS": settings.topic_user_events,
        "TOPIC_PURCHASED_ITEM": settings.topic_purchased_item,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.api", "--no-reload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{settings.api_url}/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    process.wait(timeout=30)
    raise SystemExit(f"the API did not become ready at {settings.api_url} within 30 s")


# ----------------------------------------------------------------------------- baseline


def raw_produce(
    settings: Settings, topic: str, records: list[tuple[bytes, bytes]]
) -> tuple[float, float]:
    """confluent-kafka alone, producing everything and waiting for every report: records/s and
    CPU microseconds per record."""
    producer = Producer(producer_config(settings))
    failures = 0

    def delivered(err: object, _msg: object) -> None:
        nonlocal failures
        failures += err is not None

    started, cpu = time.perf_counter(), time.process_time()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)  # queue full: let librdkafka catch up
        producer.poll(0)
    left = producer.flush(60)
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    if failures or left:
        raise SystemExit(f"baseline: {failures} failed and {left} unsent records into {topic}")
    return len(records) / took, cpu / len(records) * 1e6


# ----------------------------------------------------------------------------- report


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000 if ordered else 0.0


def stored(settings: Settings, topic: str) -> int:
    """How many records `topic` holds (sum of its partitions' end offsets)."""
    reader = Consumer({"bootstrap.servers": settings.kafka_servers, "group.id": "bench-watermarks"})
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        reader.close()


def tree_cpu(process: psutil.Process | None) -> float | None:
    """CPU seconds of a process and all its descendants (the API's server processes and their
    validation workers)."""
    if process is None:
        return None
    seconds = 0.0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            seconds += sum(member.cpu_times()[:2])
    return seconds


def load_average() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def broker_process(settings: Settings) -> psutil.Process | None:
    """The process listening on the bootstrap port, to show the broker's share of the CPU."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == settings.kafka_port:
            return psutil.Process(connection.pid) if connection.pid else None
    return None


@dataclass
class Phase:
    """One measured phase: the load's result and each process's share of a core meanwhile."""

    name: str
    load: LoadResult
    api_cpu: float
    broker_cpu: float | None
    load_average: str = field(default_factory=load_average)  # when the phase ended

    @property
    def rate(self) -> float:
        return self.load.ok / self.load.seconds

    def row(self, rate: str, note: str) -> str:
        broker = f"{self.broker_cpu:.0%}" if self.broker_cpu is not None else "?"
        return (
            f"  {self.name:<38} {rate:>16}  p50 {percentile(self.load.latencies, 0.5):6.1f} ms"
            f"  p99 {percentile(self.load.latencies, 0.99):6.1f} ms  CPU: API {self.api_cpu:4.0%}"
            f" broker {broker:>4} load {self.load.cpu_seconds / self.load.seconds:4.0%}  {note}"
            f" ({self.load_average})"
        )


def junk_requests(size: int) -> list[bytes]:
    """One request per ingest route whose body is `size` bytes of unknown keys: the costliest
    refusal (one validation error per key)."""
    keys = (size - 3) // 14  # `"k00000000":0,` each
    junk = b"{" + b",".join(b'"k%08d":0' % i for i in range(keys)) + b"}"
    return [
        http_request("PUT", "/SendEvent", junk.ljust(size)),
        http_request("POST", "/PurchasedItems", (b"[" + junk + b"]").ljust(size)),
    ]


def loop_lag(settings: Settings) -> dict[float, float]:
    """The API's event-loop lag histogram: probes (cumulative) by upper bound in seconds."""
    text = httpx.get(f"{settings.api_url}/metrics").text
    buckets = {}
    for line in text.splitlines():
        if line.startswith("api_event_loop_lag_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


@dataclass
class Stall:
    """A phase of probes, with or without junk, and the API's loop-lag histogram around it."""

    latencies: dict[str, list[float]]
    statuses: Counter[str]  # by `route status`, `junk status` for the junk
    lag_before: dict[float, float]
    lag_after: dict[float, float]

    def row(self, name: str) -> str:
        measured = self.latencies[name]
        return (
            f"p50 {percentile(measured, 0.5):6.1f} ms  p99 {percentile(measured, 0.99):6.1f} ms"
            f"  ({len(measured)} requests)"
        )

    def lag_row(self) -> str:
        """Share of the 50-ms loop probes woken more than 5 ms late, and the worst bucket."""
        counts = {
            bound: self.lag_after[bound] - self.lag_before.get(bound, 0.0)
            for bound in self.lag_after
        }
        total = counts.get(float("inf"), 0.0)
        if not total:
            return "not measured (no api_event_loop_lag_seconds)"
        late = total - counts[0.005]
        worst = min(bound for bound, n in counts.items() if n == total)
        return (
            f"{late / total:6.1%} of {total:.0f} probes > 5 ms late, worst <= {worst * 1000:g} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--connections", type=int, default=64, help="closed-loop connections")
    parser.add_argument(
        "--workers", type=int, help="API_WORKERS of the API (default: the lab's setting)"
    )
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    settings = get_settings().model_copy(
        update={
            "api_port": free_port(),
            "topic_user_events": f"bench-{tag}-UserEvents",
            "topic_purchased_item": f"bench-{tag}-PurchasedItem",
            **({"api_workers": args.workers} if args.workers is not None else {}),
        }
    )
    raw_events, raw_orders = f"bench-{tag}-raw-UserEvents", f"bench-{tag}-raw-PurchasedItem"
    topics = [settings.topic_user_events, settings.topic_purchased_item, raw_events, raw_orders]
    print(
        f"bench_api: {os.cpu_count()} cores, {load_average()} at start, API with "
        f"{settings.api_worker_count} server process(es) (API_WORKERS={settings.api_workers})"
    )
    ensure_topics(settings, topics)

    events, orders = build_records(events=20_000, orders=5 * ORDERS_PER_REQUEST)
    event_records = [(e.user_id.encode(), e.to_json_bytes()) for e in events]
    order_records = [(o.user_id.encode(), o.to_json_bytes()) for o in orders]
    event_requests = [http_request("PUT", "/SendEvent", value) for _, value in event_records]
    batch_requests = [
        http_request(
            "POST",
            "/PurchasedItems",
            b"[" + b",".join(v for _, v in order_records[i : i + ORDERS_PER_REQUEST]) + b"]",
        )
        for i in range(0, len(order_records), ORDERS_PER_REQUEST)
    ]

    stall_probes = {
        "GET /health": http_request("GET", "/health", b""),
        "PUT /SendEvent": event_requests[0],
    }

    baseline_events, baseline_event_cpu = raw_produce(settings, raw_events, event_records * 10)
    baseline_orders, baseline_order_cpu = raw_produce(settings, raw_orders, order_records * 10)
    baseline_load = load_average()

    api = start_api(settings)
    api_process, broker = psutil.Process(api.pid), broker_process(settings)
    pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))

    cpu = tree_cpu

    def phase(
        name: str, requests: list[bytes], connections: int, rate: float | None = None
    ) -> Phase:
        api_before, broker_before = cpu(api_process), cpu(broker)
        load = pool.submit(
            run_load, settings.api_port, requests, connections, args.seconds, rate
        ).result()
        api_after, broker_after = cpu(api_process), cpu(broker)
        assert api_before is not None and api_after is not None
        return Phase(
            name,
            load,
            (api_after - api_before) / load.seconds,
            (broker_after - broker_before) / load.seconds
            if broker_before is not None and broker_after is not None
            else None,
        )

    def stall(junk: list[bytes]) -> Stall:
        lag_before = loop_lag(settings)
        latencies, statuses = pool.submit(
            run_probe, settings.api_port, stall_probes, junk, args.seconds
        ).result()
        return Stall(latencies, statuses, lag_before, loop_lag(settings))

    try:
        warm_up = phase("warm-up", event_requests, 8)  # connections, producer, caches
        closed = phase(
            f"PUT /SendEvent, {args.connections} conns", event_requests, args.connections
        )
        wide = phase(
            f"PUT /SendEvent, {WIDE * args.connections} conns",
            event_requests,
            WIDE * args.connections,
        )
        fixed = phase(f"PUT /SendEvent at {FIXED_RATE:,}/s", event_requests, 64, rate=FIXED_RATE)
        batches = phase(f"POST /PurchasedItems x{ORDERS_PER_REQUEST:,}", batch_requests, 4)
        quiet = stall([])
        under_junk = stall(junk_requests(settings.api_max_body_bytes))
    finally:
        pool.shutdown()
        api.terminate()
        api.wait(timeout=30)

    acknowledged_events = sum(p.load.ok for p in (warm_up, closed, wide, fixed)) + sum(
        s.statuses["PUT /SendEvent 200"] for s in (quiet, under_junk)
    )
    acknowledged_orders = batches.load.ok * ORDERS_PER_REQUEST
    held_events = stored(settings, settings.topic_user_events)
    held_orders = stored(settings, settings.topic_purchased_item)
    admin = AdminClient({"bootstrap.servers": settings.kafka_servers})
    for deletion in admin.delete_topics(topics).values():
        deletion.result()  # wait: the requests would be dropped if the script exited first

    order_rate = batches.rate * ORDERS_PER_REQUEST
    print(
        f"  baseline, raw producer: events {baseline_events:,.0f} records/s "
        f"({baseline_event_cpu:.1f} us CPU each), orders {baseline_orders:,.0f} records/s "
        f"({baseline_order_cpu:.1f} us CPU each) ({baseline_load})"
    )
    for closed_loop in (closed, wide):
        print(
            closed_loop.row(
                f"{closed_loop.rate:,.0f} req/s",
                f"target >= {TARGET_EVENTS_PER_SECOND:,}; {closed_loop.rate / baseline_events:.1%}"
                f" of baseline; API {closed_loop.api_cpu / closed_loop.rate * 1e6:.0f} us "
                f"CPU/request (raw producer {baseline_event_cpu:.1f} us/record)",
            )
        )
    print(fixed.row(f"{fixed.rate:,.0f} req/s", f"target p99 <= {TARGET_P99_MS:g} ms"))
    print(
        batches.row(
            f"{order_rate:,.0f} orders/s",
            f"target >= {TARGET_ORDERS_PER_SECOND:,}; {order_rate / baseline_orders:.1%} of "
            f"baseline; API {batches.api_cpu / order_rate * 1e6:.1f} us CPU/order "
            f"(raw producer {baseline_order_cpu:.1f} us/record)",
        )
    )
    other = {
        status: n
        for p in (warm_up, closed, wide, fixed, batches)
        for status, n in p.load.statuses.items()
        if not 200 <= status < 300
    }
    print(f"  non-2xx answers: {other or 'none'}")
    print(
        f"  two clients sending {settings.api_max_body_bytes:,}-byte junk bodies back to back "
        f"(answers: {dict(under_junk.statuses)}); other clients' latency, "
        f"target p99 <= {TARGET_STALL_P99_MS:g} ms:"
    )
    for name in stall_probes:
        print(f"    {name:<16} {under_junk.row(name)}   without junk: {quiet.row(name)}")
    print(f"    event-loop lag   {under_junk.lag_row()}   without junk: {quiet.lag_row()}")
    consistent = held_events == acknowledged_events and held_orders == acknowledged_orders
    print(
        f"  Kafka holds {held_events:,} events and {held_orders:,} orders; the API acknowledged "
        f"{acknowledged_events:,} and {acknowledged_orders:,}: "
        + ("consistent" if consistent else "MISMATCH")
    )
    return 0 if consistent else 1


if __name__ == "__main__":
    sys.exit(main())
