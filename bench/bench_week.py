"""Benchmark: the lab after a week, in an hour. Do the lake's costs stay flat as batches pile up?

In one run, on names of its own (a topic, S3 prefixes, checkpoints, PostgreSQL tables and a lab
home, all removed at the end) against the services of `task infra-up`:

1. `--orders` orders (20,000), made by the generator's own crowd (`app.generator.crowd`), are
   produced to the bench's topic with Kafka timestamps in time order, an eighth of them on each
   of the past 7 UTC days and the last eighth on today's, up to now. The lake is partitioned by
   the UTC date of that timestamp (`ingest_date`), so it holds 7 closed days and today's open
   one, as after a week of running: the stream's last batches write today's. The topic keeps
   its records for good (`retention.ms=-1`): the oldest are more than the broker's 168 h old.
2. Two lakes are built from that topic by the lab's stream (`python -m app.lake --available-now`):
   "many batches", with maxOffsetsPerTrigger = orders / `--batches` (2,000), i.e. the small
   micro-batches of a short trigger; and "one batch", everything in one micro-batch.
3. On both, side by side: a plain pyarrow read of the lake folder (`pyarrow.dataset` over S3)
   and `task status` (`python -m app.status`), each the best of 3; `task analyze` (`python -m
   app.analysis.run`); a restarted stream landing 200 new orders (the lab's
   maxOffsetsPerTrigger). Each runs as a user runs it, with the environment pointing at that
   lake. Also the data files per closed day and today's, the size of the sink log
   (`_spark_metadata`: all of it, and what a reader reads: the latest `N.compact` and the entries
   after it) and of the checkpoint.
4. The many-batch lake is compacted (`python -m app.lake.compaction --grace-seconds 0`) and
   measured again.
5. Check: the rows (OrderId, Kafka partition, offset) read by Spark, by pyarrow over the sink
   log's committed files (`app.lake.sink_log.committed_files`) and by a plain folder read are,
   before and after the compaction, exactly the orders produced, each once; and the committed
   rows' content (every column) is the same before and after.

Targets: after the compaction, each cost within 1.5x of the one-batch lake's, and at most
`FILES_PER_DAY_TARGET` data files per closed day. The exit status is 1 when a row check fails.
The machine is shared: compare the ratios of one run, beside the load averages it prints.

    .venv/bin/python bench/bench_week.py [--orders 20000] [--batches 2000]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

# Run as a script from anywhere: the repository root holds the `app` and `tests` packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyspark.sql import SparkSession

from app.core.clients import kafka_admin
from app.core.config import ROOT, Settings, get_settings
from app.core.topics import ensure_topics
from app.generator.crowd import Crowd
from app.lake.queries import sinks
from app.lake.schema import PARTITION_COLUMN
from app.lake.session import build_spark_session
from app.lake.sink_log import SINK_LOG, committed_files, folder_files, log_state
from app.lake.storage import location
from app.schemas import Purchase
from tests.support import make_isolated_settings, remove_isolated

DAYS = 7
RESTART_ORDERS = 200
TARGET_RATIO = 1.5
# One-batch lake: one file per Kafka partition and day; compaction may split a large day.
FILES_PER_DAY_TARGET = 4
KEY = ("OrderId", "kafka_partition", "kafka_offset")
COMPACTION = "app.lake.compaction"
# The quick costs (a plain read, `task status`) are the best of this many runs: on a shared
# machine a single one of a few seconds mostly measures the neighbours.
QUICK_ROUNDS = 3

Key = tuple[str, int, int]


@dataclass
class Lake:
    name: str
    settings: Settings
    log: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.as_environment()}


@dataclass
class Costs:
    """One lake's figures at one moment."""

    read: float = math.nan
    status: float = math.nan
    analyze: float = math.nan
    restart: float = math.nan
    files_per_day: dict[str, int] = field(default_factory=dict)  # closed days only
    files_today: int = 0  # the open day's
    log_files: int = 0
    log_bytes: int = 0
    # What a reader of the log reads: its latest `N.compact` and the entries after it.
    log_read_files: int = 0
    log_read_bytes: int = 0
    checkpoint_files: int = 0
    checkpoint_bytes: int = 0


# --- names and orders -------------------------------------------------------------------------


def week_lakes(base: Settings, home: Path) -> tuple[Lake, Lake]:
    """The one-batch and many-batch lakes: one topic, each its own prefixes, checkpoint (on S3,
    as the lab keeps it) and repeat-purchases table."""
    tag = f"week{uuid.uuid4().hex[:8]}"
    shared = make_isolated_settings(base, tag).model_copy(update={"lab_home": home})
    (home / "jars").symlink_to(base.lab_home / "jars", target_is_directory=True)
    lakes = []
    for name in ("one", "many"):
        top = f"test-{tag}/{name}"
        settings = shared.model_copy(
            update={
                "s3_purchases_prefix": f"{top}/raw/purchased_items/",
                "s3_quarantine_prefix": f"{top}/raw/purchased_items_quarantine/",
                "spark_checkpoint_dir": f"s3a://{base.s3_bucket}/{top}/checkpoints",
                "repeat_purchases_table": f"{shared.repeat_purchases_table}_{name}",
            }
        )
        lakes.append(Lake(name, settings, home / f"{name}.log"))
    return lakes[0], lakes[1]


def create_topic(settings: Settings) -> None:
    """The bench's topic, keeping its records for good: a week-old timestamp is past the
    broker's 168 h retention, which would delete the lake's first days from Kafka."""
    ensure_topics(settings, [settings.topic_purchased_item])
    resource = ConfigResource(
        ResourceType.TOPIC,
        settings.topic_purchased_item,
        incremental_configs=[
            ConfigEntry("retention.ms", "-1", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin = kafka_admin(settings)  # kept while its futures run: a collected client cancels them
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def crowd_orders(crowd: Crowd, moments: Iterator[datetime]) -> Iterator[Purchase]:
    """One order of the generator's crowd per moment, placed in the second before it."""
    for moment in moments:
        orders: list[Purchase] = []
        while not orders:  # most sessions end without an order
            orders = [p for session in crowd.tick(moment, 1) for p in session.purchases]
        yield orders[0]


def week_moments(count: int, now: datetime) -> Iterator[datetime]:
    """`count` moments in time order, as a week of running leaves them: a share of 1/(DAYS + 1)
    on each of the DAYS closed UTC days before `now`'s, and the last share on `now`'s day, from
    its midnight to `now` (the day the stream is still writing, as it would be a week in)."""
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    start = midnight - timedelta(days=DAYS)
    for n in range(count):
        position = (n + 1) / count * (DAYS + 1)  # in days from start; the last day is today's
        if position <= DAYS:
            yield start + timedelta(days=position)
        else:
            yield midnight + (position - DAYS) * (now - midnight)


def moments_now(count: int) -> Iterator[datetime]:
    return (datetime.now(UTC) for _ in range(count))


def produce(settings: Settings, orders: Iterator[Purchase]) -> Counter[Key]:
    """Send each order with its own time as the Kafka timestamp; (OrderId, partition, offset)
    of each acknowledged record."""
    produced: Counter[Key] = Counter()
    failed: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        key, partition, offset = message.key(), message.partition(), message.offset()
        if error is not None or key is None or partition is None or offset is None:
            failed.append(error or KafkaError(KafkaError.UNKNOWN))
        else:
            produced[(key.decode(), partition, offset)] += 1

    producer = Producer(
        {"bootstrap.servers": settings.kafka_servers, "linger.ms": 50, "enable.idempotence": True}
    )
    for order in orders:
        while True:
            try:
                producer.produce(
                    settings.topic_purchased_item,
                    value=order.to_json_bytes(),
                    # The OrderId as key: the delivery report names the order it acknowledges.
                    key=order.order_id.encode(),
                    timestamp=int(order.timestamp.timestamp() * 1000),
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120) or failed:
        raise SystemExit(f"Kafka did not take every order: {failed[:3]} ({len(failed)} failed)")
    return produced


# --- the lab's commands -----------------------------------------------------------------------


def run_module(lake: Lake, module: str, *args: str) -> float:
    """`python -m module args` as a user runs it, with the lake's settings; its wall time."""
    with lake.log.open("a") as out:
        out.write(f"\n=== python -m {module} {' '.join(args)}\n")
        out.flush()
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=lake.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
        took = time.perf_counter() - started
    if done.returncode != 0:
        tail = "".join(lake.log.read_text(errors="replace").splitlines(True)[-15:])
        raise SystemExit(f"python -m {module} failed ({done.returncode}); {lake.log} ends:\n{tail}")
    return took


def build(lake: Lake, max_offsets: int) -> tuple[float, int]:
    """The stream over the whole backlog in micro-batches of at most `max_offsets` records;
    (seconds, micro-batches committed to the sink log)."""
    stream = Lake(
        lake.name,
        lake.settings.model_copy(update={"spark_max_offsets_per_trigger": max_offsets}),
        lake.log,
    )
    took = run_module(stream, "app.lake", "--available-now")
    return took, batches(lake.settings)


def batches(settings: Settings) -> int:
    sink = sinks(settings)[0]
    return log_state(settings, sink.url, sink.checkpoint).sink + 1


# --- what each cost is ------------------------------------------------------------------------


def folder_table(settings: Settings) -> pa.Table:
    """The lake folder as a plain Parquet reader sees it (fresh listing: no s3fs cache)."""
    fs, folder = location(settings, settings.purchases_url)
    fs.invalidate_cache()
    return ds.dataset(folder, filesystem=fs, format="parquet", partitioning="hive").to_table()


def committed_table(settings: Settings) -> pa.Table:
    """The rows of the files the sink log commits."""
    fs, _ = location(settings, settings.purchases_url)
    files = committed_files(settings, settings.purchases_url)
    return ds.dataset(files, filesystem=fs, format="parquet", partitioning="hive").to_table()


def layout(settings: Settings, costs: Costs, today: date) -> None:
    """Data files per closed day, sink log and checkpoint sizes."""
    per_day: Counter[str] = Counter()
    for path in folder_files(settings, settings.purchases_url):
        day = next(p for p in path.split("/") if p.startswith(f"{PARTITION_COLUMN}="))
        per_day[day.split("=", 1)[1]] += 1
    costs.files_per_day = {d: n for d, n in sorted(per_day.items()) if d < today.isoformat()}
    costs.files_today = per_day[today.isoformat()]
    fs, folder = location(settings, settings.purchases_url)
    fs.invalidate_cache()
    log = fs.find(f"{folder}/{SINK_LOG}", detail=True)
    costs.log_files, costs.log_bytes = len(log), sum(int(i["size"]) for i in log.values())
    entries = {path.rsplit("/", 1)[1]: int(info["size"]) for path, info in log.items()}
    batch = {
        name: int(name.removesuffix(".compact"))
        for name in entries
        if name.removesuffix(".compact").isdigit()  # not the folder's own entry, nor .crc files
    }
    start = max((n for name, n in batch.items() if name.endswith(".compact")), default=0)
    read = [entries[name] for name, n in batch.items() if n >= start]
    costs.log_read_files, costs.log_read_bytes = len(read), sum(read)
    fs, folder = location(settings, settings.checkpoint_dir)
    found = fs.find(folder, detail=True)
    costs.checkpoint_files = len(found)
    costs.checkpoint_bytes = sum(int(i["size"]) for i in found.values())


def measure(lake: Lake, costs: Costs, today: date) -> None:
    """The plain read, `task status` and `task analyze` on a lake, and its layout."""
    rounds = []
    for _ in range(QUICK_ROUNDS):
        started = time.perf_counter()
        rows = folder_table(lake.settings).num_rows
        rounds.append(time.perf_counter() - started)
    costs.read = min(rounds)
    costs.status = min(run_module(lake, "app.status") for _ in range(QUICK_ROUNDS))
    reports = lake.settings.lab_home / "reports" / lake.name
    costs.analyze = run_module(lake, "app.analysis.run", "--output", str(reports))
    layout(lake.settings, costs, today)
    print(
        f"  {lake.name}: read {rows:,} rows in {costs.read:.2f} s, status {costs.status:.1f} s, "
        f"analyze {costs.analyze:.1f} s; {sum(costs.files_per_day.values())} files in "
        f"{len(costs.files_per_day)} closed days; sink log {costs.log_files} files "
        f"(load {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def restart(lake: Lake, costs: Costs, expected: int) -> None:
    """A restarted stream (the lab's maxOffsetsPerTrigger) until the new orders are committed."""
    costs.restart = run_module(lake, "app.lake", "--available-now")
    landed = committed_table(lake.settings).num_rows
    if landed != expected:
        raise SystemExit(f"{lake.name}: {landed} rows committed after a restart, not {expected}")
    print(f"  {lake.name}: restart landed the new orders in {costs.restart:.1f} s", flush=True)


# --- the rows' check --------------------------------------------------------------------------


def keys(table: pa.Table) -> Counter[Key]:
    columns = [table.column(name).to_pylist() for name in KEY]
    return Counter(zip(*columns, strict=True))


def sorted_rows(table: pa.Table) -> pa.Table:
    """The committed rows in one order, the partition column last (as a path, not a column)."""
    table = table.sort_by([(name, "ascending") for name in KEY])
    return table.select(sorted(table.column_names, key=lambda name: name == PARTITION_COLUMN))


def readers(spark: SparkSession, settings: Settings) -> dict[str, Counter[Key]]:
    """The (OrderId, partition, offset) rows each kind of reader sees, with their counts."""
    spark_rows = spark.read.parquet(settings.purchases_url).select(*KEY).collect()
    return {
        "Spark (spark.read.parquet)": Counter((r[0], r[1], r[2]) for r in spark_rows),
        "pyarrow over committed_files": keys(committed_table(settings)),
        "plain folder read": keys(folder_table(settings)),
    }


def check_rows(seen: dict[str, Counter[Key]], produced: Counter[Key], when: str) -> list[str]:
    """A line per reader that does not see exactly the orders produced, each once."""
    problems = []
    for reader, rows in seen.items():
        missing, extra = produced - rows, rows - produced
        if missing or extra:
            problems.append(
                f"{when}: {reader} misses {sum(missing.values())} rows (e.g. "
                f"{list(missing)[:2]}) and has {sum(extra.values())} extra (e.g. {list(extra)[:2]})"
            )
    print(f"  rows {when}: {', '.join(f'{r} {sum(c.values()):,}' for r, c in seen.items())}")
    return problems


def compare_content(before: pa.Table, after: pa.Table) -> list[str]:
    """The committed rows' columns that differ after the compaction."""
    if before.num_rows != after.num_rows:
        return [f"content: {before.num_rows} committed rows before, {after.num_rows} after"]
    return [
        f"content: column {name} differs after the compaction"
        for name in before.column_names
        if name not in after.column_names
        or not before.column(name).combine_chunks().equals(after.column(name).combine_chunks())
    ]


# --- the report -------------------------------------------------------------------------------


def seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f} s"


def table(one: Costs, many: Costs, after: Costs | None) -> list[str]:
    rows = [
        ("plain pyarrow read of the lake folder (best of 3)", "read"),
        ("`task status` (best of 3)", "status"),
        ("`task analyze`", "analyze"),
        (f"a restarted stream landing {RESTART_ORDERS} new orders", "restart"),
    ]
    lines = [
        "| cost | one batch | many batches, before compaction | after compaction "
        "| ratio after/one | target | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, name in rows:
        base, before = getattr(one, name), getattr(many, name)
        now = getattr(after, name) if after else math.nan
        ratio = now / base if base else math.nan
        verdict = "-" if math.isnan(ratio) else ("PASS" if ratio <= TARGET_RATIO else "FAIL")
        shown = "-" if math.isnan(ratio) else f"{ratio:.2f}x"
        lines.append(
            f"| {label} | {seconds(base)} | {seconds(before)} ({before / base:.1f}x) | "
            f"{seconds(now)} | {shown} | <= {TARGET_RATIO}x | {verdict} |"
        )

    def most(costs: Costs | None) -> str:
        if costs is None or not costs.files_per_day:
            return "-"
        return f"{max(costs.files_per_day.values())} (of {len(costs.files_per_day)} days)"

    day_verdict = "-"
    if after and after.files_per_day:
        day_verdict = (
            "PASS" if max(after.files_per_day.values()) <= FILES_PER_DAY_TARGET else "FAIL"
        )
    lines.append(
        f"| data files per closed day (most) | {most(one)} | {most(many)} | {most(after)} | | "
        f"<= {FILES_PER_DAY_TARGET} | {day_verdict} |"
    )

    cells = [str(c.files_today) if c else "-" for c in (one, many, after)]
    lines.append(f"| data files of today, the open day | {' | '.join(cells)} | | | |")

    def size(files: int, size: int) -> str:
        return f"{files} files, {size / 1024:,.1f} KiB"

    for label, files, size_of in (
        ("sink log (`_spark_metadata`), all", "log_files", "log_bytes"),
        ("sink log, what a reader reads", "log_read_files", "log_read_bytes"),
        ("checkpoint", "checkpoint_files", "checkpoint_bytes"),
    ):
        cells = [
            size(getattr(c, files), getattr(c, size_of)) if c else "-" for c in (one, many, after)
        ]
        lines.append(f"| {label} | {' | '.join(cells)} | | | |")
    return lines


# --- the run ----------------------------------------------------------------------------------


def compaction_ready() -> bool:
    return importlib.util.find_spec(COMPACTION) is not None


def run(one: Lake, many: Lake, orders: int, wanted_batches: int) -> int:
    create_topic(many.settings)
    started = time.perf_counter()
    now = datetime.now(UTC)
    today = now.date()
    produced = produce(many.settings, crowd_orders(Crowd(1), week_moments(orders, now)))
    print(
        f"produced {orders:,} orders over {today - timedelta(days=DAYS)} .. {today} (today, "
        f"the open day: 1/{DAYS + 1} of them) in {time.perf_counter() - started:.1f} s",
        flush=True,
    )

    took, count = build(one, max(one.settings.spark_max_offsets_per_trigger, orders))
    print(f"one-batch lake: {count} micro-batch(es) in {took:.1f} s", flush=True)
    per_trigger = max(1, orders // wanted_batches)
    took, count = build(many, per_trigger)
    print(
        f"many-batch lake: {count:,} micro-batches of <= {per_trigger} orders in {took:.0f} s "
        f"({took / count:.2f} s a batch; asked for {wanted_batches:,}; "
        f"load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    if count < wanted_batches:
        print(f"  NOTE: fewer micro-batches than the {wanted_batches:,} asked for")

    print("measuring both lakes ...", flush=True)
    costs = {lake.name: Costs() for lake in (one, many)}
    for lake in (one, many):
        measure(lake, costs[lake.name], today)
    produced += produce(many.settings, crowd_orders(Crowd(2), moments_now(RESTART_ORDERS)))
    for lake in (one, many):
        restart(lake, costs[lake.name], sum(produced.values()))

    spark = build_spark_session(many.settings, "bench-week", master="local[2]")
    problems = check_rows(readers(spark, many.settings), produced, "before compaction")
    problems += check_rows(readers(spark, one.settings), produced, "one-batch lake")
    before = sorted_rows(committed_table(many.settings))

    after: Costs | None = None
    if not compaction_ready():
        print(
            f"compaction: `{COMPACTION}` does not exist yet (app/lake/compaction.py); the "
            "after-compaction column stays empty. Run this bench again once it has landed."
        )
    else:
        took = run_module(many, COMPACTION, "--grace-seconds", "0")
        print(f"compaction of the many-batch lake: {took:.1f} s", flush=True)
        problems += check_rows(readers(spark, many.settings), produced, "after compaction")
        problems += compare_content(before, sorted_rows(committed_table(many.settings)))
        after = Costs()
        measure(many, after, today)
        produced += produce(many.settings, crowd_orders(Crowd(3), moments_now(RESTART_ORDERS)))
        restart(many, after, sum(produced.values()))
    spark.stop()

    print(f"\nThe lab after a week: {orders:,} orders over {DAYS} days, {count:,} micro-batches")
    print("\n".join(table(costs["one"], costs["many"], after)))
    for name, lake_costs in (("one batch", costs["one"]), ("many", costs["many"])):
        print(f"  files per closed day, {name}: {lake_costs.files_per_day}")
    if after:
        print(f"  files per closed day, after compaction: {after.files_per_day}")
    for problem in problems:
        print(f"FAIL {problem}")
    if not problems:
        print("rows: every order produced is read once by Spark, pyarrow and a folder read")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument(
        "--batches",
        type=int,
        default=2_000,
        help="micro-batches of the many-batch lake (maxOffsetsPerTrigger = orders / batches)",
    )
    args = parser.parse_args()
    print(f"load average at the start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    home = Path(tempfile.mkdtemp(prefix="lab-week-"))
    one, many = week_lakes(get_settings(), home)
    try:
        return run(one, many, args.orders, args.batches)
    finally:
        for lake in (one, many):
            remove_isolated(lake.settings)
        shutil.rmtree(home, ignore_errors=True)
        print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
