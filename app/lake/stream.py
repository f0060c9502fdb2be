"""Running the purchases stream: topic `PurchasedItem` to raw Parquet on S3, every order once.

`run_stream` is the job's whole life: check the services, take the checkpoint's writer lock,
check that each checkpoint agrees with its sink log (`app.lake.sink_log`), remove the files of
attempts cut short, start the two queries (`app.lake.queries`) and watch them. A query that fails
because Kafka or S3 does not answer is an outage, not an error (`app.lake.failures` tells them
apart): the queries are stopped, the stream waits until both answer, then restarts them from
their checkpoints (with backoff when restarts fail in a row). Any other failure (a missing jar,
lost Kafka data, a checkpoint that disagrees with the lake) ends the job with what happened and
what to run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from pyspark.sql import SparkSession
from pyspark.sql.streaming.query import StreamingQuery

from app.core.clients import s3_filesystem
from app.core.config import Settings
from app.core.errors import LabError
from app.core.kafka import ensure_topics
from app.core.process import kill_tree
from app.lake.failures import (
    PROBE_EVERY_SECONDS,
    Failure,
    Log,
    OutageReport,
    explain_failure,
    is_outage,
    unreachable,
)
from app.lake.queries import sinks, start_queries, stop_queries
from app.lake.sink_log import SINK_LOG, disagreement, remove_orphans
from app.lake.spark import build_spark_session
from app.lake.writer_lock import LeaseUnreachable, WriterLock, writer_lock

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# On SIGTERM a query's stop waits at most this long for its batch in flight: honcho sends
# SIGKILL 5 s after SIGTERM.
STOP_TIMEOUT_SECONDS = 2
# Pauses before restarting queries that failed in a row: short at first, then a minute; queries
# that ran for HEALTHY_SECONDS before failing start the series again.
BACKOFF_SECONDS = (1, 2, 4, 8, 15, 30, 60)
HEALTHY_SECONDS = 120.0


def preflight(settings: Settings) -> None:
    """Kafka answers, the topic exists and the bucket exists, or say what to run."""
    try:
        ensure_topics(settings, [settings.topic_purchased_item])
    except Exception as exc:
        raise LabError(
            f"Kafka is not reachable at {settings.kafka_servers} ({exc}). Run `task infra-up`."
        ) from exc
    try:
        found = s3_filesystem(settings).exists(settings.s3_bucket)
    except Exception as exc:
        raise LabError(
            f"S3 is not reachable at {settings.s3_endpoint_url} ({exc}). Run `task infra-up`."
        ) from exc
    if not found:
        raise LabError(
            f"Bucket {settings.s3_bucket} does not exist at {settings.s3_endpoint_url}. "
            "Run `task infra-up` (it creates the bucket)."
        )


def prepare_sinks(settings: Settings, log: Log) -> None:
    """Refuse a checkpoint that disagrees with its sink log; remove files no commit lists.
    Run while holding the writer lock, before the queries start."""
    for sink in sinks(settings):
        problem = disagreement(settings, sink.url, sink.checkpoint)
        if problem:
            raise LabError(problem)
    for sink in sinks(settings):
        removed = remove_orphans(settings, sink.url)
        if removed:
            log(
                f"{sink.name}: removed {len(removed)} file(s) that no commit of "
                f"{sink.url.rstrip('/')}/{SINK_LOG} lists (left by an attempt cut short)"
            )


def _stream_session(settings: Settings, master: str | None) -> SparkSession:
    # honcho stops a process by sending SIGTERM to its whole group: the JVM would run its
    # shutdown hooks and kill the queries before Python could stop them. A signal ignored at
    # exec stays ignored in the JVM (PySpark does the same for SIGINT), and the JVM still exits
    # with Python, when its stdin closes.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        spark = build_spark_session(
            settings, "purchases-stream", kafka=True, master=master, ui=True
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    # While Kafka is away its client warns twice a second per connection, and Spark's offset
    # reader once per retry; the stream says it once itself (`OutageReport`).
    log4j = spark.sparkContext._jvm.org.apache.logging.log4j  # type: ignore[union-attr]
    for name in (
        "org.apache.kafka.clients.NetworkClient",
        "org.apache.spark.sql.kafka010.KafkaOffsetReaderAdmin",  # a stack trace per retry
    ):
        log4j.core.config.Configurator.setLevel(name, log4j.Level.ERROR)
    return spark


def _report_progress(queries: list[StreamingQuery], seen: dict[str, int], log: Log) -> None:
    for query in queries:
        progress = query.lastProgress
        if progress is None or progress["batchId"] <= seen.get(query.name, -1):
            continue
        seen[query.name] = progress["batchId"]
        counts = progress["observedMetrics"].get("messages")
        if counts and counts["messages"]:
            took = progress["durationMs"].get("triggerExecution", 0) / 1000
            log(
                f"{query.name}: batch {progress['batchId']}, {counts['messages']} messages "
                f"({counts['not_valid']} not valid orders) in {took:.1f} s"
            )


@contextlib.contextmanager
def _stop_requests(seconds: float, log: Log) -> Iterator[list[int]]:
    """SIGTERM/SIGINT are recorded, not raised, so the queries are stopped between two steps.
    The first one also sets a deadline `seconds` later (SPARK_STOP_SECONDS): a stop that takes
    longer (a JVM slow to stop on a loaded machine) is cut short by `_abandon`."""
    received: list[int] = []
    deadline: list[threading.Timer] = []

    def request_stop(signum: int, _frame: object) -> None:
        received.append(signum)
        # The default handlers are back, so a second Ctrl-C interrupts even the stop itself.
        for number, handler in previous.items():
            signal.signal(number, handler)
        timer = threading.Timer(seconds, _abandon, args=(seconds, log))
        timer.daemon = True
        timer.start()
        deadline.append(timer)

    previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
    try:
        yield received
    finally:
        # A deadline that has not fired is cancelled. One that has fired is joined: `_abandon`
        # ends the process with status 0, and the main thread (whose calls into the killed JVM
        # fail) must not exit first with an error of its own.
        for timer in deadline:
            timer.cancel()
            timer.join()
        for number, handler in previous.items():
            signal.signal(number, handler)


def _abandon(seconds: float, log: Log) -> None:
    """The stop took too long: kill the JVM (and the Python workers it started) and exit 0 at
    once. Nothing is lost: the checkpoint's file lock or S3 lease goes with the process, and the
    next start removes the cut-short batch's files and writes the batch again."""
    try:
        log(
            f"the stop took more than {seconds:g} s: killed the JVM; the micro-batch "
            "cut short is written again on the next start"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        # From here on the main thread's calls into the dead JVM fail: say nothing more.
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
        kill_tree(os.getpid(), include_root=False)
    finally:
        os._exit(0)


def _pause(seconds: float, received: list[int]) -> None:
    """Sleep, but wake within a tenth of a second of a stop request."""
    deadline = time.monotonic() + seconds
    while not received and time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def run_stream(
    settings: Settings,
    *,
    available_now: bool = False,
    master: str | None = None,
    log: Log = print,
) -> None:
    """Run both queries until SIGTERM/Ctrl-C (or, with `available_now`, until the backlog is
    written), riding out Kafka or S3 outages, then stop them and the session. An error a restart
    cannot mend raises LabError."""
    preflight(settings)
    lock = writer_lock(settings)
    lock.acquire()
    try:
        # Before the JVM starts: a refusal takes a second, not half a minute.
        prepare_sinks(settings, log)
        spark = _stream_session(settings, master)
        with _stop_requests(settings.spark_stop_seconds, log) as received:
            try:
                _supervise(spark, settings, lock, available_now, log, received)
            finally:
                spark.stop()
    finally:
        lock.release()


def _supervise(
    spark: SparkSession,
    settings: Settings,
    lock: WriterLock,
    available_now: bool,
    log: Log,
    received: list[int],
) -> None:
    """Start the queries and watch them; after an outage, wait until the services answer and
    start them again. Returns when they finish or a stop is requested."""
    seen: dict[str, int] = {}
    outage = OutageReport(log)
    first = True
    restarts = 0  # in a row, each after a longer pause
    while not received:
        began = time.monotonic()
        started = _start(spark, settings, lock, available_now, log)
        if isinstance(started, Failure):
            failure: Failure | None = started
        else:
            if first:
                trigger = "available now" if available_now else settings.spark_trigger_interval
                log(
                    f"streaming {settings.topic_purchased_item} -> {settings.purchases_url} "
                    f"(quarantine {settings.purchases_quarantine_url}), trigger: {trigger}, "
                    f"checkpoints in {settings.checkpoint_dir}"
                )
                first = False
            outage.back("the queries restarted from their checkpoints")
            failure = _watch(started, settings, lock, log, received, seen, outage)
        if failure is None:
            break
        if not (failure.outage or is_outage(failure.message, settings)):
            raise LabError(failure.explanation)
        outage.queries_stopped(unreachable(settings), failure.message)
        if time.monotonic() - began > HEALTHY_SECONDS:
            restarts = 0
        _pause(BACKOFF_SECONDS[min(restarts, len(BACKOFF_SECONDS) - 1)], received)
        restarts += 1
        _wait_for_services(settings, received)
    if received:
        log(f"signal {signal.Signals(received[0]).name}: stopped")


def _wait_for_services(settings: Settings, received: list[int]) -> None:
    # A probe is cheap (a TCP connect, one S3 request), so it need not back off far.
    for delay in itertools.chain(BACKOFF_SECONDS, itertools.repeat(PROBE_EVERY_SECONDS)):
        if received or not unreachable(settings):
            return
        _pause(min(delay, PROBE_EVERY_SECONDS), received)


def _start(
    spark: SparkSession, settings: Settings, lock: WriterLock, available_now: bool, log: Log
) -> list[StreamingQuery] | Failure:
    """Take (or take back) the writer lock, check and clean the sinks, start the queries."""
    try:
        lock.acquire()
        prepare_sinks(settings, log)
        return start_queries(spark, settings, available_now=available_now)
    except LabError:
        raise
    except Exception as exc:  # S3 or Kafka away while reading the logs or starting
        return Failure(str(exc), f"the stream could not start its queries: {exc}")


def _failure(queries: list[StreamingQuery], settings: Settings) -> Failure | None:
    for query in queries:
        exception = query.exception()
        if exception is not None:
            message = str(exception)
            return Failure(message, explain_failure(query, message, settings))
    return None


def _watch(
    queries: list[StreamingQuery],
    settings: Settings,
    lock: WriterLock,
    log: Log,
    received: list[int],
    seen: dict[str, int],
    outage: OutageReport,
) -> Failure | None:
    """Report progress, watch the services and renew the lock until the queries end, fail or a
    stop is requested; then stop them. None when they ended well or were asked to stop."""
    failure = None
    probed = time.monotonic()
    try:
        while not received and any(query.isActive for query in queries):
            _report_progress(queries, seen, log)
            failure = _failure(queries, settings)
            if failure is not None:
                break
            if time.monotonic() - probed > PROBE_EVERY_SECONDS:
                # Spark waits out a short outage inside the batch; say so all the same.
                away = unreachable(settings)
                if away:
                    outage.away(away)
                else:
                    outage.back("the queries carried on")
                probed = time.monotonic()
            try:
                lock.renew()
            except LeaseUnreachable as exc:
                failure = Failure(str(exc), str(exc), outage=True)
                break
            _pause(1.0, received)
        if received:
            log(f"signal {signal.Signals(received[0]).name}: stopping the queries")
    finally:
        stop_queries(queries, patience=STOP_TIMEOUT_SECONDS if received else None)
    _report_progress(queries, seen, log)
    return failure or _failure(queries, settings)
