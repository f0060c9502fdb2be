"""Benchmark: the whole lab under honcho at a fixed high rate for 10 minutes. Does each hop keep up?

In one run, on names of its own (topics, drain group, MongoDB database, S3 prefixes and
checkpoint, Airflow home and metadata database, all removed at the end) against the services of
`task infra-up`:

1. The generator's events per session are measured from its own crowd, and its users per second
   set so it offers `--events-per-second` (3,000 by default) plus the orders its sessions make.
2. `honcho start` runs the Procfile (API, generator, Airflow, Spark stream, console) for
   `--minutes` (10). Every 10 s the bench reads the topics' end offsets (what the API
   acknowledged), the drain group's committed offsets and the lake's committed rows.
3. It prints, per hop, the throughput over the soak against the rate offered, the lag at the
   end, the DAG runs' durations against their 2-minute interval (from Airflow's metadata
   database) and the Spark batches' durations against the trigger (from the stream's log).
4. It prints the CPU budget: CPU seconds per component over the soak (the API, the generator,
   each Airflow component and the tasks it runs, the Spark driver and its JVM, the console, and
   the services of `task infra-up`: Kafka, FerretDB, the S3 gateway, PostgreSQL), each one's
   share, cores and microseconds per acknowledged event, next to the machine's busy CPU time
   over the same span (`CpuBudget` says how forked processes are counted).

A hop keeps up when its lag at the end is below what arrives in one of its intervals (the DAG's
2 minutes plus one run; the stream's trigger plus one batch) and its runs take less time than
their interval (the DAG: every run; the stream's valid-orders query: 95 % of its batches after
the first, which holds what arrived while the JVM started; the quarantine query reads the same
messages beside it and is shown, not judged).

    .venv/bin/python bench/bench_soak.py [--events-per-second 3000] [--minutes 10]
        [--trigger "30 seconds"]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from confluent_kafka import Consumer, TopicPartition

# Run as a script from anywhere: the repository root holds the `app` and `tests` packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.clients import postgres_connection
from app.core.config import ROOT, Settings, get_settings
from app.generator.crowd import Crowd
from app.infra.bootstrap import bootstrap
from app.infra.services import local_services
from app.lake.sink_log import committed_files
from app.lake.storage import location
from tests.support import free_port, make_isolated_settings, remove_isolated, stop_group

HONCHO = Path(sys.executable).parent / "honcho"
SAMPLE_SECONDS = 10
DAG_INTERVAL = 120.0
# "purchased_items <- PurchasedItem: batch 7, 5999 messages (0 not valid orders) in 6.1 s"; the
# quarantine query logs the same batch as "purchased_items_quarantine <- ...".
BATCH_LINE = re.compile(r"(\w+) <- \S+: batch (\d+), (\d+) messages .* in ([\d.]+) s")
VALID_QUERY = "purchased_items"
# The generator's message for a tick it started late: "tick 37 started 1.09 s late: the ..."
LATE_TICK = re.compile(r"started ([\d.]+) s late: the ")


@dataclass
class Sample:
    at: float
    events: int  # UserEvents end offsets: events the API acknowledged
    orders: int  # PurchasedItem end offsets
    drained: int  # the drain group's committed offsets
    lake: int  # orders in committed lake files


class LakeRows:
    """Rows in the lake's committed files, each file's footer read once: a file never changes
    once committed, and reading every footer at every sample made this bench (with the S3
    reads it causes) a visible share of the CPU it measures."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def count(self, settings: Settings) -> int:
        import pyarrow.dataset as ds

        files = committed_files(settings, settings.purchases_url)
        fs, _ = location(settings, settings.purchases_url)
        for path in files:
            if path not in self.rows:
                self.rows[path] = ds.dataset([path], filesystem=fs, format="parquet").count_rows()
        return sum(self.rows[path] for path in files)


@dataclass
class Soak:
    settings: Settings
    log: Path
    cpu: CpuBudget
    samples: list[Sample] = field(default_factory=list)
    lake_rows: LakeRows = field(default_factory=LakeRows)


# Which Procfile process a process under honcho is, from the module its command line runs
# (honcho forks itself once per Procfile line, and that fork starts the line's command).
PROCFILE_COMPONENTS = {
    "app.api": "API",
    "app.generator": "generator",
    "app.airflow_runner": "Airflow runner",
    "app.lake": "Spark driver (Python)",
    "app.console": "console",
}
# The runner's children, by a word of their command line (the API server's title says
# `api_server`); what they fork inherits their name.
AIRFLOW_COMPONENTS = {
    "scheduler": "Airflow scheduler",
    "dag-processor": "Airflow dag-processor",
    "api-server": "Airflow api-server",
    "api_server": "Airflow api-server",
    "triggerer": "Airflow triggerer",
}
# The LocalExecutor's workers and the task processes they fork retitle themselves so.
AIRFLOW_TASKS = "Airflow tasks"
SERVICE_COMPONENTS = {
    "postgres": "PostgreSQL",
    "kafka": "Kafka",
    "mongo": "FerretDB (MongoDB)",
    "s3": "S3 gateway",
}


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores; not idle, iowait,
    or steal, which is time taken by other machines)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - times.iowait - times.steal)


def child_component(process: psutil.Process, parent: str) -> str:
    """The component `process` counts for, given its parent's."""
    args = process.cmdline()
    command = " ".join(args)
    if command.startswith("airflow worker"):
        return AIRFLOW_TASKS
    if parent == "honcho" and "-m" in args[:-1]:
        return PROCFILE_COMPONENTS.get(args[args.index("-m") + 1], parent)
    if parent == "Airflow runner":
        for word, name in AIRFLOW_COMPONENTS.items():
            if word in command:
                return name
    if parent.startswith("Spark") and process.name() == "java":
        return "Spark JVM"
    return parent


class CpuBudget:
    """CPU seconds per component of the lab, from its process trees.

    A process's CPU is counted while it lives (user + system, all threads) and, once it has
    ended, in its parent's `children_user`/`children_system`: the kernel adds there the times of
    every child the parent waited for (with the children's own reaped children). So the sum over
    the live processes of both, at one sample, holds everything a tree has spent, even the
    task processes that live and die between two samples. A process's reaped children count for
    the component its children are: the scheduler's are the LocalExecutor's workers, which run
    the tasks; everywhere else the parent's. Only children nobody waits for (auto-reaped, or
    orphaned out of the tree) escape; the lab starts none that matter.
    """

    def __init__(self, services: list[tuple[str, int]]) -> None:
        self.services = services  # (component, pid) of each service `task infra-up` started
        self.honcho: int | None = None  # set once honcho runs
        self.started_at = time.monotonic()
        self.machine_start = busy_seconds()
        self.start = self.read()
        self.last = self.start
        self.last_at = self.started_at
        self.machine_last = self.machine_start

    def read(self) -> dict[str, float]:
        spent: dict[str, float] = {}

        def add(process: psutil.Process, component: str) -> None:
            try:
                times = process.cpu_times()
                children = process.children()
            except psutil.Error:  # ended since it was listed: its parent counts it next time
                return
            reaped = AIRFLOW_TASKS if component == "Airflow scheduler" else component
            spent[component] = spent.get(component, 0.0) + times.user + times.system
            spent[reaped] = spent.get(reaped, 0.0) + times.children_user + times.children_system
            for child in children:
                with contextlib.suppress(psutil.Error):
                    add(child, child_component(child, component))

        for component, pid in self.services:
            with contextlib.suppress(psutil.Error):
                add(psutil.Process(pid), component)
        if self.honcho is not None:
            with contextlib.suppress(psutil.Error):
                add(psutil.Process(self.honcho), "honcho")
        # Its own times only: its children are honcho and the lab, counted above.
        spent["this bench (sampling)"] = sum(psutil.Process().cpu_times()[:2])
        return spent

    def sample(self) -> None:
        """Read the trees now; the report covers the start to the last sample."""
        self.last = self.read()
        self.last_at = time.monotonic()
        self.machine_last = busy_seconds()

    def report(self, events: int) -> None:
        """The table: each component's CPU seconds, share, cores and microseconds per event."""
        wall = self.last_at - self.started_at
        spent = {name: self.last[name] - self.start.get(name, 0.0) for name in self.last}
        measured = sum(spent.values())
        machine = self.machine_last - self.machine_start
        print(
            f"\nCPU over {wall / 60:.1f} min by component ({events:,} events acknowledged; "
            f"{psutil.cpu_count()} cores: {psutil.cpu_count() * wall:,.0f} CPU-s at most)"
        )
        print(f"  {'component':<24} {'CPU-s':>8} {'share':>6} {'cores':>6} {'us/event':>9}")
        for name, seconds in sorted(spent.items(), key=lambda item: -item[1]):
            print(
                f"  {name:<24} {seconds:>8,.1f} {seconds / measured:>6.1%} "
                f"{seconds / wall:>6.2f} {seconds / max(events, 1) * 1e6:>9.0f}"
            )
        print(
            f"  {'measured, all':<24} {measured:>8,.1f} {'':>6} {measured / wall:>6.2f} "
            f"{measured / max(events, 1) * 1e6:>9.0f}"
        )
        print(
            f"  {'machine (/proc/stat)':<24} {machine:>8,.1f} {'':>6} {machine / wall:>6.2f} "
            f"{machine / max(events, 1) * 1e6:>9.0f}   (not measured above: "
            f"{machine - measured:,.1f} CPU-s: the kernel's threads, other processes)"
        )


def events_per_user(seed: int = 1, users: int = 2000) -> tuple[float, float]:
    """(events, orders) per generated session, from the generator's own crowd."""
    sessions = Crowd(seed).tick(datetime.now(UTC), users)
    events = sum(len(session.events) for session in sessions)
    orders = sum(len(session.purchases) for session in sessions)
    return events / users, orders / users


def seconds_of(interval: str) -> float:
    number, unit = interval.split()
    return float(number) * {"second": 1, "minute": 60}[unit.rstrip("s")]


def read_sample(
    settings: Settings, consumer: Consumer, started: float, lake_rows: LakeRows
) -> Sample:
    def ends(topic: str) -> tuple[int, list[TopicPartition]]:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        return sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps), tps

    events, event_partitions = ends(settings.topic_user_events)
    orders, _ = ends(settings.topic_purchased_item)
    committed = consumer.committed(event_partitions, timeout=10)
    drained = sum(max(tp.offset, 0) for tp in committed)
    return Sample(
        time.monotonic() - started,
        events,
        orders,
        drained,
        lake_rows.count(settings),
    )


def dag_runs(settings: Settings) -> list[tuple[str, float | None, dict[str, float]]]:
    """(start, duration or None while running, {task: longest duration}) of each DAG run."""
    conn = postgres_connection(settings, settings.postgres_airflow_database)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT r.run_id, r.start_date, r.end_date, t.task_id, max(t.duration) "
                "FROM dag_run r LEFT JOIN task_instance t "
                "ON t.dag_id = r.dag_id AND t.run_id = r.run_id "
                "WHERE r.dag_id = %s AND r.start_date IS NOT NULL "
                "GROUP BY r.run_id, r.start_date, r.end_date, t.task_id ORDER BY r.start_date",
                (settings.dag_id,),
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    runs: dict[str, tuple[str, float | None, dict[str, float]]] = {}
    for run_id, start, end, task, duration in rows:
        took = (end - start).total_seconds() if end else None
        run = runs.setdefault(run_id, (start.strftime("%H:%M:%S"), took, {}))
        if task and duration is not None:
            run[2][task] = float(duration)
    return list(runs.values())


def spark_batches(log: Path) -> dict[str, list[float]]:
    """The seconds of each non-empty micro-batch the stream logged, by query name."""
    batches: dict[str, list[float]] = {}
    for match in BATCH_LINE.finditer(log.read_text(errors="replace")):
        batches.setdefault(match[1], []).append(float(match[4]))
    return batches


def p95(values: list[float]) -> float:
    return (
        statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]
    )


def soak_settings(
    base: Settings, home: Path, users_per_second: int, concurrency: int, trigger: str
) -> Settings:
    tag = f"soak{uuid.uuid4().hex[:8]}"
    isolated = make_isolated_settings(base, tag)
    (home / "jars").symlink_to(base.lab_home / "jars", target_is_directory=True)
    return isolated.model_copy(
        update={
            "lab_home": home,
            "api_port": free_port(),
            "airflow_port": free_port(),
            "console_port": free_port(),
            "generator_users_per_second": users_per_second,
            # The serving setup of a busy lab on two cores: no live reload, and one API process
            # and one generator process. Two of each took more CPU per event for the same rate
            # (4-minute soaks side by side: API 218 against 170 us an event, Kafka 63 against
            # 49, with two producers' smaller batches), and one process of each has the CPU for
            # 3,000 events/s.
            "api_reload": False,
            "generator_processes": 1,
            "api_workers": 1,
            "generator_concurrency": concurrency,
            "spark_trigger_interval": trigger,
            "spark_checkpoint_dir": f"s3a://{base.s3_bucket}/test-{tag}/checkpoints",
        }
    )


def service_pids(base: Settings) -> list[tuple[str, int]]:
    """(component, pid) of each service `task infra-up` runs as a local process."""
    pids = []
    for service in local_services(base):
        pid = service.pid()
        if pid is None:
            print(f"  CPU of {service.name} not measured: no local process (containers?)")
        else:
            pids.append((SERVICE_COMPONENTS[service.name.split("-")[0]], pid))
    return pids


def run_soak(settings: Settings, minutes: float, services: list[tuple[str, int]]) -> Soak:
    soak = Soak(settings, settings.lab_home / "honcho.log", CpuBudget(services))
    env_file = settings.lab_home / "honcho.env"  # the settings come from the environment
    env_file.touch()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_servers,
            "group.id": settings.drain_group_id,  # read, never joined
            "enable.auto.commit": False,
        }
    )
    with soak.log.open("wb") as out:
        honcho = subprocess.Popen(
            [HONCHO, "start", "-e", str(env_file), "-f", str(ROOT / "Procfile")],
            cwd=ROOT,
            env={**os.environ, **settings.as_environment()},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    soak.cpu.honcho = honcho.pid
    started = time.monotonic()
    try:
        while time.monotonic() - started < minutes * 60:
            time.sleep(SAMPLE_SECONDS)
            if honcho.poll() is not None:
                raise SystemExit(f"honcho stopped early; see {soak.log}")
            try:
                soak.samples.append(read_sample(settings, consumer, started, soak.lake_rows))
                soak.cpu.sample()  # with each Sample: the CPU per event counts the same events
            except Exception as error:  # a hop still starting: try again next time
                print(f"  sample skipped: {error}", file=sys.stderr)
            last = soak.samples[-1] if soak.samples else None
            if last:
                print(
                    f"  {last.at:5.0f} s: {last.events:>9,} events, {last.orders:>8,} orders "
                    f"acknowledged; {last.drained:>9,} drained; {last.lake:>8,} in the lake",
                    flush=True,
                )
        try:
            health = httpx.get(f"{settings.airflow_url}/api/v2/monitor/health", timeout=10)
            answer = f"HTTP {health.status_code}"
        except httpx.HTTPError as error:  # a loaded machine: say so, keep the report
            answer = f"no answer ({type(error).__name__})"
        print(f"  Airflow at the end: {answer}")
    finally:
        stop_group(honcho, signal.SIGINT, timeout=90)
        consumer.close()
    return soak


def report(soak: Soak, offered: tuple[float, float], trigger: float) -> None:
    samples = soak.samples
    if len(samples) < 3:
        raise SystemExit("too few samples to judge anything; see the log")
    # Throughput from the first sample at which each hop had started moving.
    first, last = samples[0], samples[-1]
    span = last.at - first.at
    events_rate = (last.events - first.events) / span
    orders_rate = (last.orders - first.orders) / span
    moving = next((s for s in samples if s.drained > 0), last)
    drain_rate = (last.drained - moving.drained) / max(last.at - moving.at, 1)
    lake_start = next((s for s in samples if s.lake > 0), last)
    lake_rate = (last.lake - lake_start.lake) / max(last.at - lake_start.at, 1)
    event_lag = last.events - last.drained
    order_lag = last.orders - last.lake
    print(f"\nSoak of {last.at / 60:.1f} min (machine load {os.getloadavg()[0]:.1f})")
    print(
        f"  API -> Kafka   {events_rate:>8,.0f} events/s  {orders_rate:>7,.0f} orders/s "
        f"acknowledged (offered {offered[0]:,.0f} and {offered[1]:,.0f})"
    )
    # A tick the generator started late: for that long it offered less than the rate.
    late = [float(seconds) for seconds in LATE_TICK.findall(soak.log.read_text(errors="replace"))]
    print(
        f"  generator ticks started late: {len(late)}, by {sum(late):.1f} s in all "
        f"({sum(late) / max(last.at, 1):.1%} of the soak)"
    )
    runs = dag_runs(soak.settings)
    finished = [took for _, took, _ in runs if took is not None]
    print(
        f"  DAG drain      {drain_rate:>8,.0f} events/s over its runs; lag at the end "
        f"{event_lag:,} events (one interval brings {events_rate * DAG_INTERVAL:,.0f})"
    )
    for start, took, tasks in runs:
        parts = ", ".join(f"{task} {seconds:.0f} s" for task, seconds in sorted(tasks.items()))
        state = f"{took:6.1f} s" if took is not None else "running"
        print(f"    run at {start}: {state} against {DAG_INTERVAL:.0f} s  ({parts})")
    batches = spark_batches(soak.log)
    durations = batches.get(VALID_QUERY, [])[1:]  # the first: the start-up's backlog
    print(
        f"  Spark stream   {lake_rate:>8,.0f} orders/s into the lake; lag at the end "
        f"{order_lag:,} orders (one trigger brings {orders_rate * trigger:,.0f})"
    )
    for name, seconds in sorted(batches.items()):
        startup, rest = seconds[0], seconds[1:] or seconds[:1]
        print(
            f"    {name}: first batch {startup:.1f} s (start-up backlog), then {len(rest)} "
            f"batches: median {statistics.median(rest):.1f} s, p95 {p95(rest):.1f} s, longest "
            f"{max(rest):.1f} s against the {trigger:.0f} s trigger"
        )
    dag_ok = (
        bool(finished)
        and max(finished) < DAG_INTERVAL
        and event_lag <= events_rate * (DAG_INTERVAL + max(finished))
    )
    spark_ok = bool(durations) and p95(durations) <= trigger
    spark_ok = spark_ok and order_lag <= orders_rate * (trigger + max(durations, default=0))
    api_ok = events_rate >= 0.95 * offered[0]
    for hop, ok in (("API", api_ok), ("DAG", dag_ok), ("Spark stream", spark_ok)):
        print(f"  {hop:<14} {'keeps up' if ok else 'DOES NOT KEEP UP'}")
    soak.cpu.report(last.events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events-per-second", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--trigger", default="30 seconds")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=512,
        help="requests in flight per generator process (the rate at up to ~170 ms each)",
    )
    parser.add_argument("--keep-log", type=Path, help="copy honcho's log here at the end")
    args = parser.parse_args()
    base = get_settings()
    events, orders = events_per_user()
    users = max(1, round(args.events_per_second / events))
    offered = (users * events, users * orders)
    print(
        f"Generator: {events:.2f} events and {orders:.2f} orders per session; {users} sessions/s "
        f"offer {offered[0]:,.0f} events/s and {offered[1]:,.0f} orders/s for {args.minutes:g} min"
    )
    home = Path(tempfile.mkdtemp(prefix="lab-soak-"))
    settings = soak_settings(base, home, users, args.concurrency, args.trigger)
    try:
        bootstrap(settings)
        soak = run_soak(settings, args.minutes, service_pids(base))
        report(soak, offered, seconds_of(args.trigger))
    finally:
        if args.keep_log and (home / "honcho.log").exists():
            shutil.copyfile(home / "honcho.log", args.keep_log)
        remove_isolated(settings)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
