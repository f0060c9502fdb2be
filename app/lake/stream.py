"""Running the purchases stream: topic `PurchasedItem` to raw Parquet on S3, every order once.

`run_stream` is the job's whole life: check the services, take the checkpoint's writer lock,
check that each checkpoint agrees with its sink log (`app.lake.sink_log`), remove the files of
attempts cut short, start the two queries (`app.lake.queries`) and watch them. A query that fails
because Kafka or S3 does not answer is an outage, not an error (`app.lake.failures` tells them
apart): the queries are stopped, the stream waits until both answer, then restarts them from
their checkpoints (with backoff when restarts fail in a row). Any other failure (a missing jar,
lost Kafka data, a checkpoint that disagrees with the lake) ends the job with what happened and
what to run. A lost writer lock (an S3 lease taken over, or not renewed in time) kills the JVM at
once and ends the job, saying who holds the lock now: a polite stop would let the batch in
flight commit beside the new writer.
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
from typing import NoReturn

from pyspark.sql import SparkSession
from pyspark.sql.streaming.query import StreamingQuery

from app.core.clients import s3_filesystem
from app.core.config import Settings
from app.core.errors import EXIT_TRY_AGAIN, LabError, ServiceAway
from app.core.process import kill_tree
from app.core.topics import ensure_topics
from app.lake.compaction import StreamCompactor
from app.lake.failures import (
    PROBE_EVERY_SECONDS,
    Failure,
    Log,
    OutageReport,
    explain_failure,
    is_outage,
    unreachable,
)
from app.lake.gaps import find_gaps, retention_warnings
from app.lake.gaps import refusal as gap_refusal
from app.lake.queries import sinks, start_queries, stop_queries
from app.lake.session import build_spark_session
from app.lake.sink_log import SINK_LOG, disagreement, remove_orphans, remove_stale_orphans
from app.lake.writer_lock import COMPACTION, LeaseLost, LockHeld, WriterLock, writer_lock

# Files kept by the clean-up because a former writer may still commit them, by sink folder.
Kept = dict[str, set[str]]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# On SIGTERM a query's stop waits at most this long for its batch in flight: honcho sends
# SIGKILL 5 s after SIGTERM.
STOP_TIMEOUT_SECONDS = 2
# Pauses before restarting queries that failed in a row: short at first, then a minute; queries
# that ran for HEALTHY_SECONDS before failing start the series again.
BACKOFF_SECONDS = (1, 2, 4, 8, 15, 30, 60)
HEALTHY_SECONDS = 120.0
# How often a running stream says again that Kafka's retention is about to delete orders it has
# not read yet (`app.lake.gaps.retention_warnings`).
RETENTION_WARN_EVERY_SECONDS = 600.0


def preflight(settings: Settings) -> None:
    """Kafka answers, the topic exists and the bucket exists, or say what to run."""
    try:
        ensure_topics(settings, [settings.topic_purchased_item])
    except Exception as exc:
        raise ServiceAway(
            f"Kafka is not reachable at {settings.kafka_servers} ({exc}). Run `task infra-up`."
        ) from exc
    try:
        found = s3_filesystem(settings).exists(settings.s3_bucket)
    except Exception as exc:
        raise ServiceAway(
            f"S3 is not reachable at {settings.s3_endpoint_url} ({exc}). Run `task infra-up`."
        ) from exc
    if not found:
        raise LabError(
            f"Bucket {settings.s3_bucket} does not exist at {settings.s3_endpoint_url}. "
            "Run `task infra-up` (it creates the bucket)."
        )


def prepare_sinks(settings: Settings, log: Log, former_may_write: bool = False) -> Kept:
    """Refuse a checkpoint that disagrees with its sink log or resumes at offsets Kafka no
    longer holds (`app.lake.gaps`); remove files no commit lists.
    Run while holding the writer lock, before the queries start. With `former_may_write` (the
    lock was taken over from a holder that may still be alive) only the files nobody can commit
    any more go (`remove_stale_orphans`); the others are returned, for `sweep` to remove later."""
    for sink in sinks(settings):
        problem = disagreement(settings, sink.url, sink.checkpoint)
        if problem:
            raise LabError(problem)
    gaps = find_gaps(settings)
    if gaps:
        raise LabError(gap_refusal(settings, gaps))
    kept: Kept = {}
    for sink in sinks(settings):
        if former_may_write:
            removed, left = remove_stale_orphans(settings, sink.url)
        else:
            removed, left = remove_orphans(settings, sink.url), []
        if removed:
            log(
                f"{sink.name}: removed {len(removed)} file(s) that no commit of "
                f"{sink.url.rstrip('/')}/{SINK_LOG} lists (left by an attempt cut short)"
            )
        if left:
            kept[sink.url] = set(left)
            log(
                f"{sink.name}: kept {len(left)} file(s) that no commit lists yet: the job that "
                "held the writer lease before may still commit them; they are removed once a "
                "later batch is committed"
            )
    return kept


def sweep(settings: Settings, kept: Kept, log: Log) -> None:
    """Remove the files `prepare_sinks` kept once nobody can commit them (safe while the queries
    run: see `remove_stale_orphans`); `kept` is updated to what is left."""
    for url in list(kept):
        removed, left = remove_stale_orphans(settings, url)
        kept[url] &= set(left)
        if removed:
            log(
                f"{url}: removed {len(removed)} file(s) that no commit lists, now that a later "
                "batch is committed"
            )
        if not kept[url]:
            del kept[url]


# The JIT's first tier only (as Kafka's JVM, `app/infra/kafka.py`). At the lab's rates each
# micro-batch is small and planned anew: the optimising compiler (C2) was a third of the JVM's
# CPU in the soak, and without it the JVM took 0.70x the CPU. The price is a large backlog:
# 500,000 orders at 5,824 orders/s against 10,080 with C2 (bench_stream.py, same run).
STREAM_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


def _stream_session(settings: Settings, master: str | None) -> SparkSession:
    # honcho stops a process by sending SIGTERM to its whole group: the JVM would run its
    # shutdown hooks and kill the queries before Python could stop them. A signal ignored at
    # exec stays ignored in the JVM (PySpark does the same for SIGINT), and the JVM still exits
    # with Python, when its stdin closes.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        spark = build_spark_session(
            settings,
            "purchases-stream",
            kafka=True,
            master=master,
            ui=True,
            java_options=STREAM_JAVA_OPTIONS,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Kafka's client and Spark's offset reader are quiet while Kafka is away (the driver's
    # `log4j2.properties`): the stream says it once itself (`OutageReport`).
    return spark


def _quiet_console() -> None:
    """A requested stop interrupts Spark's threads, which log the interruptions as errors with
    long stack traces: from here on the driver logs to its file only (`spark.log`)."""
    spark = SparkSession.getActiveSession()
    if spark is None:
        return
    log4j = spark.sparkContext._jvm.org.apache.logging.log4j  # type: ignore[union-attr]
    context = log4j.LogManager.getContext(False)
    context.getConfiguration().getRootLogger().removeAppender("console")
    context.updateLoggers()


def _report_progress(queries: list[StreamingQuery], seen: dict[str, int], log: Log) -> bool:
    """Log each query's batches finished since the last call; True if there were any."""
    new = False
    for query in queries:
        progress = query.lastProgress
        if progress is None or progress["batchId"] <= seen.get(query.name, -1):
            continue
        seen[query.name] = progress["batchId"]
        new = True
        counts = progress["observedMetrics"].get("messages")
        if counts and counts["messages"]:
            took = progress["durationMs"].get("triggerExecution", 0) / 1000
            log(
                f"{query.name}: batch {progress['batchId']}, {counts['messages']} messages "
                f"({counts['not_valid']} not valid orders) in {took:.1f} s"
            )
    return new


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


def _kill_jvm() -> int:
    """Kill the JVM (and the Python workers it started) at once. From here on the main thread's
    calls into the dead JVM fail: its output goes nowhere. Returns a copy of stderr for a last
    word."""
    sys.stdout.flush()
    sys.stderr.flush()
    last_word = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
    kill_tree(os.getpid(), include_root=False)
    return last_word


def _abandon(seconds: float, log: Log) -> None:
    """The stop took too long: kill the JVM and exit 0 at once. Nothing is lost: the
    checkpoint's file lock or S3 lease goes with the process, and the next start removes the
    cut-short batch's files and writes the batch again."""
    try:
        log(
            f"the stop took more than {seconds:g} s: killed the JVM; the micro-batch "
            "cut short is written again on the next start"
        )
        _kill_jvm()
    finally:
        os._exit(0)


def _lock_lost(lock: WriterLock, reason: LabError) -> NoReturn:
    """The writer lock is lost (called on the lock's own thread): kill the JVM before it can
    commit another file, then say why and who holds the lock now, and exit 1; or, when nobody
    holds it and S3 does not answer, EXIT_TRY_AGAIN (under `task up` the stream's watcher
    starts it again once S3 answers)."""
    status = 1
    try:
        last_word = _kill_jvm()
        other = lock.holder()
        if other is None:
            status = EXIT_TRY_AGAIN
            what = (
                f"{reason}. This stream killed its JVM at once, so that it cannot write beside "
                "a job that takes the lease over; it can start again once S3 answers (`task "
                "infra-up`; under `task up` that happens by itself)."
            )
        else:
            held = "" if isinstance(reason, LeaseLost) else f"; {other} holds it now"
            what = (
                f"{reason}{held}. This stream killed its JVM at once, so that only that job "
                "writes the lake; the micro-batch this one had in flight is that job's to write."
            )
        os.write(last_word, f"app.lake: {what}\n".encode())
    finally:
        os._exit(status)


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
    try:
        lock.acquire()
    except LockHeld as refusal:
        if refusal.role == COMPACTION:
            # A compaction ran while no stream did; it ends in seconds: a matter of starting
            # again (exit 75: `task up`'s watcher does), not an error.
            raise ServiceAway(str(refusal)) from refusal
        raise
    lock.keep(lambda reason: _lock_lost(lock, reason))
    try:
        # Before the JVM starts: a refusal takes a second, not half a minute.
        kept = prepare_sinks(settings, log, lock.former_may_write)
        compactor = None if available_now else StreamCompactor(settings, log, lock)
        spark = _stream_session(settings, master)
        with _stop_requests(settings.spark_stop_seconds, log) as received:
            try:
                _supervise(spark, settings, lock, kept, compactor, available_now, log, received)
            finally:
                spark.stop()
        sweep(settings, kept, log)
    finally:
        lock.release()


def _supervise(
    spark: SparkSession,
    settings: Settings,
    lock: WriterLock,
    kept: Kept,
    compactor: StreamCompactor | None,
    available_now: bool,
    log: Log,
    received: list[int],
) -> None:
    """Start the queries and watch them; after an outage, wait until the services answer and
    start them again; stop them for a compaction asked for (`app.lake.compaction`), then start
    them again. Returns when they finish or a stop is requested."""
    seen: dict[str, int] = {}
    outage = OutageReport(log)
    first = True
    restarts = 0  # in a row, each after a longer pause
    again = False  # a start after a failed one
    while not received:
        began = time.monotonic()
        started = _start(spark, settings, lock, kept, available_now, log, again=again)
        if isinstance(started, Failure):
            failure: Failure | CompactionDue | None = started
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
            failure = _watch(started, settings, kept, compactor, log, received, seen, outage)
        if isinstance(failure, CompactionDue):
            if compactor is not None and not received:
                compactor.serve()
            again = True
            continue
        if failure is None:
            break
        if not (failure.outage or is_outage(failure.message, settings)):
            raise LabError(failure.explanation)
        outage.queries_stopped(unreachable(settings), failure.message)
        if time.monotonic() - began > HEALTHY_SECONDS:
            restarts = 0
        _pause(BACKOFF_SECONDS[min(restarts, len(BACKOFF_SECONDS) - 1)], received)
        restarts += 1
        again = True
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
    spark: SparkSession,
    settings: Settings,
    lock: WriterLock,
    kept: Kept,
    available_now: bool,
    log: Log,
    *,
    again: bool,
) -> list[StreamingQuery] | Failure:
    """Start the queries; `again` (after an outage) checks and cleans the sinks first, as
    `run_stream` did before the first start."""
    try:
        if again:
            kept.update(prepare_sinks(settings, log, lock.former_may_write))
        _warn_retention(settings, log)
        return start_queries(spark, settings, available_now=available_now)
    except LabError:
        raise
    except Exception as exc:  # S3 or Kafka away while reading the logs or starting
        return Failure(str(exc), f"the stream could not start its queries: {exc}")


def _warn_retention(settings: Settings, log: Log) -> None:
    try:
        for line in retention_warnings(settings):
            log(f"WARNING: {line}")
    except Exception as exc:  # Kafka away: the outage watch says so
        log(f"the stream could not check Kafka's retention ({type(exc).__name__}: {exc})")


def _failure(queries: list[StreamingQuery], settings: Settings) -> Failure | None:
    for query in queries:
        exception = query.exception()
        if exception is not None:
            message = str(exception)
            return Failure(message, explain_failure(query, message, settings))
    return None


class CompactionDue:
    """`_watch` stopped the queries for a compaction request."""


# How long the queries may take to finish their batches in flight before a compaction stops them.
BATCH_END_WAIT_SECONDS = 30.0


def _idle(queries: list[StreamingQuery], received: list[int]) -> None:
    """Wait (a while) until no query is in a micro-batch: a batch stopped midway is safe, but
    its work is lost and done again."""
    deadline = time.monotonic() + BATCH_END_WAIT_SECONDS
    while not received and time.monotonic() < deadline:
        if not any(query.isActive and query.status["isTriggerActive"] for query in queries):
            return
        _pause(0.2, received)


def _watch(
    queries: list[StreamingQuery],
    settings: Settings,
    kept: Kept,
    compactor: StreamCompactor | None,
    log: Log,
    received: list[int],
    seen: dict[str, int],
    outage: OutageReport,
) -> Failure | CompactionDue | None:
    """Report progress, watch the services and sweep kept files until the queries end, fail,
    a compaction is asked for or a stop is requested; then stop them. None when they ended
    well or were asked to stop."""
    failure: Failure | CompactionDue | None = None
    probed = warned = time.monotonic()
    try:
        while not received and any(query.isActive for query in queries):
            # A failed query first: asking a running one for its progress can wait on its
            # batch, which waits on the service that just went away.
            failure = _failure(queries, settings)
            if failure is not None:
                break
            if _report_progress(queries, seen, log) and kept:
                sweep(settings, kept, log)
            if time.monotonic() - probed > PROBE_EVERY_SECONDS:
                # Spark waits out a short outage inside the batch; say so all the same.
                away = unreachable(settings)
                if away:
                    outage.away(away)
                else:
                    outage.back("the queries carried on")
                probed = time.monotonic()
            if time.monotonic() - warned > RETENTION_WARN_EVERY_SECONDS:
                _warn_retention(settings, log)
                warned = time.monotonic()
            if compactor is not None:
                compactor.tick()
                if compactor.due():
                    _idle(queries, received)
                    failure = CompactionDue()
                    break
            _pause(1.0, received)
        if received:
            log(f"signal {signal.Signals(received[0]).name}: stopping the queries")
            _quiet_console()
    finally:
        stop_queries(queries, patience=STOP_TIMEOUT_SECONDS if received else None)
    _report_progress(queries, seen, log)
    return _failure(queries, settings) or failure
