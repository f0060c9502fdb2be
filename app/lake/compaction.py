"""Compaction: each sink partition's small files merged into few, for every reader at once.

A micro-batch writes a file per Kafka partition it read and per day it touched: at a 30 s trigger
that is thousands of small files a day, and a sink log (`_spark_metadata`) whose every compaction
lists them all. Reading the lake, `task status`, `task analyze` and a stream restart all grow with
that count (docs/lake.md has the measurements). This module merges them.

Design: the file sink keeps its own layout and log; a compaction rewrites both. For each sink:

1. The small files (below half of `LAKE_COMPACT_TARGET_MB`) that the log's latest compaction
   file (`_spark_metadata/N.compact`, which lists every file committed up to batch N) lists are
   grouped by partition (`ingest_date=...`) and packed into bins of about the target size; a
   partition with fewer than `LAKE_COMPACT_MIN_FILES` small files is left alone.
2. Each bin's rows are copied, unchanged and in order, into one new Parquet file in the same
   partition folder (pyarrow; the Spark schema kept in the footer); its row count is checked
   against the bin's footers. Until step 4 no log lists it: an orphan, like the file of a batch
   cut short, removed by the next clean-up if the compaction dies here.
3. The files about to be replaced are recorded in `_compaction/retired.json` (`app.lake.retired`)
   with the time they may be deleted.
4. The commit: `N.compact` is rewritten in one PUT, listing the new files instead of the old
   ones. Every reader that opens the log from then on (Spark, `committed_files`, the stream's next
   compaction of its log, which starts from `N.compact`) sees the new files, and one that opened
   it before sees the old ones, which stay for `LAKE_COMPACT_GRACE_SECONDS`. Files listed by the
   log's later entries (batches after N) are left for the next run, so one object is rewritten.
5. Replaced files past their grace time are deleted (`app.lake.retired.vacuum`).

A kill at any point leaves every order in the lake once for every reader of the log: before
step 4 the log is unchanged, after it the new files hold every row of the old. Only a plain
folder listing sees a partition's rows twice between steps 2 and 5, as it would see a crashed
batch's files before the next start; `app.lake.sink_log.committed_files` is exact throughout.

Rewriting the log is writing to the sink, so only the holder of the stream's writer lock
(`app.lake.writer_lock`) compacts, while its queries are stopped. `compact_lake` (`task
lake-compact`, the `lake_compaction` DAG) takes the lock when no stream holds it; when a stream
does, it leaves a request in `_compaction/requests/` and waits: the stream looks for requests
every few seconds, stops its queries between batches, compacts (`StreamCompactor`), answers in
`_compaction/results/` and starts its queries again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from app.core.config import Settings
from app.core.errors import LabError
from app.lake.queries import Sink, sinks
from app.lake.retired import COMPACTION_FOLDER, Retired, read_retired, vacuum, write_retired
from app.lake.sink_log import (
    SINK_LOG,
    _batch_names,
    _key,
    _latest,
    _listed_files,
    committed_files,
    remove_orphans,
)
from app.lake.storage import location
from app.lake.writer_lock import COMPACTION, STREAM, LockHeld, WriterLock, writer_lock

Log = Callable[[str], None]
REQUESTS = f"{COMPACTION_FOLDER}/requests"
RESULTS = f"{COMPACTION_FOLDER}/results"
LOG_VERSION = "v1"  # the first line of every `_spark_metadata` file Spark 4 writes
# How often `compact_lake` looks for the stream's answer, and the stream for requests.
POLL_SECONDS = 1.0
REQUEST_EVERY_SECONDS = 5.0
# Rows per row group of a merged file (~40 MB of orders in memory at once), and small files read
# at once while merging.
ROW_GROUP_ROWS = 131_072
READ_THREADS = 8


@dataclass
class SinkCompaction:
    """What one compaction did to one sink."""

    sink: str
    partitions: int = 0  # partitions rewritten
    files_before: int = 0  # files the log listed
    files_after: int = 0
    merged: int = 0  # small files replaced
    written: int = 0  # new files
    rows: int = 0  # rows copied
    deleted: int = 0  # replaced files deleted (their grace time over)
    seconds: float = 0.0
    note: str = ""

    def line(self) -> str:
        head = f"{self.sink}: "
        if self.note:
            return head + self.note
        if not self.merged:
            body = f"{self.files_before} files, nothing to merge"
        else:
            body = (
                f"{self.merged} small files in {self.partitions} partition(s) merged into "
                f"{self.written} ({self.rows} rows); the log lists {self.files_before} -> "
                f"{self.files_after} files"
            )
        gone = f"; {self.deleted} replaced files deleted" if self.deleted else ""
        return f"{head}{body}{gone} in {self.seconds:.1f} s"


@dataclass(frozen=True)
class Options:
    target_bytes: int
    min_files: int
    grace_seconds: float

    @classmethod
    def of(cls, settings: Settings, grace_seconds: float | None = None) -> Options:
        grace = settings.lake_compact_grace_seconds if grace_seconds is None else grace_seconds
        return cls(settings.lake_compact_target_mb * 2**20, settings.lake_compact_min_files, grace)


def _read_log_file(fs: AbstractFileSystem, path: str) -> list[dict[str, Any]]:
    lines = fs.cat_file(path).decode().splitlines()
    if not lines or lines[0] != LOG_VERSION:
        raise LabError(
            f"{path} is not a sink log file this lab knows (first line {lines[:1]!r}, expected "
            f"{LOG_VERSION!r}); compaction left the lake as it was."
        )
    return [json.loads(line) for line in lines[1:] if line]


def _log_body(entries: list[dict[str, Any]]) -> bytes:
    # As Spark writes it: the version, then one compact JSON entry per line, no final newline.
    lines = [LOG_VERSION, *(json.dumps(entry, separators=(",", ":")) for entry in entries)]
    return "\n".join(lines).encode()


def plan_bins(
    entries: list[dict[str, Any]], options: Options
) -> dict[str, list[list[dict[str, Any]]]]:
    """The bins to merge, by partition folder (as the log's URIs write it): the small add-entries
    of each partition with at least `min_files` of them, oldest first, packed up to the target
    size; a bin of one file is no bin."""
    small: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry.get("action", "add") == "add" and entry["size"] < options.target_bytes / 2:
            small[entry["path"].rsplit("/", 1)[0]].append(entry)
    plan: dict[str, list[list[dict[str, Any]]]] = {}
    for folder, files in small.items():
        if len(files) < options.min_files:
            continue
        bins: list[list[dict[str, Any]]] = [[]]
        size = 0
        for entry in sorted(files, key=lambda item: (item["modificationTime"], item["path"])):
            if bins[-1] and size + entry["size"] > options.target_bytes:
                bins.append([])
                size = 0
            bins[-1].append(entry)
            size += entry["size"]
        bins = [group for group in bins if len(group) > 1]
        if bins:
            plan[folder] = bins
    return plan


def _merge(fs: AbstractFileSystem, group: list[dict[str, Any]], folder_uri: str) -> dict[str, Any]:
    """Copy the rows of `group`'s files into one new file of `folder_uri`; its log entry."""
    keys = [_key(entry["path"]) for entry in group]
    first = pq.ParquetFile(fs.open(keys[0]))
    schema = first.schema_arrow  # with Spark's row schema in its metadata
    expected = 0
    name = f"part-compacted-{uuid.uuid4()}.c000.snappy.parquet"
    target = f"{_key(folder_uri)}/{name}"
    try:
        with (
            fs.open(target, "wb") as out,
            pq.ParquetWriter(out, schema, compression="snappy", coerce_timestamps="us") as writer,
        ):
            # Inputs read side by side (S3 round trips), in order; written in row groups of
            # ROW_GROUP_ROWS: one per small file would keep the many-tiny-reads cost.
            buffered: list[pa.Table] = []
            with ThreadPoolExecutor(READ_THREADS) as pool:
                tables = pool.map(lambda key: pq.read_table(fs.open(key)), keys)
                for key, table in zip(keys, tables, strict=True):
                    if not table.schema.equals(schema, check_metadata=False):
                        raise LabError(
                            f"{key} has another schema than {keys[0]} in the same partition; "
                            "compaction left this partition as it was"
                        )
                    buffered.append(table)
                    expected += table.num_rows
                    if sum(t.num_rows for t in buffered) >= ROW_GROUP_ROWS:
                        writer.write_table(pa.concat_tables(buffered), ROW_GROUP_ROWS)
                        buffered = []
            if buffered:
                writer.write_table(pa.concat_tables(buffered), ROW_GROUP_ROWS)
        written = pq.ParquetFile(fs.open(target)).metadata.num_rows
        if written != expected:
            raise LabError(f"{target} holds {written} rows, its inputs {expected}")
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(target)
        raise
    info = fs.info(target)
    return {
        "path": f"{folder_uri}/{name}",
        "size": int(info["size"]),
        "isDir": False,
        "modificationTime": int(info["LastModified"].timestamp() * 1000),
        "blockReplication": group[0].get("blockReplication", 1),
        "blockSize": group[0].get("blockSize", 33554432),
        "action": "add",
        "rows": expected,  # dropped before the entry is written to the log
    }


def compact_sink(settings: Settings, url: str, name: str, options: Options) -> SinkCompaction:
    """Compact one sink folder. The caller holds the writer lock and no query writes to it."""
    began = time.monotonic()
    fs, folder = location(settings, url)
    log_dir = f"{folder}/{SINK_LOG}"
    result = SinkCompaction(name)
    batches = _batch_names(fs, log_dir)
    listed = set(_listed_files(fs, log_dir, batches))
    result.files_before = result.files_after = len(listed)
    compactions = [file for _, file in batches if file.endswith(".compact")]
    if compactions:
        log_name = compactions[-1]
        entries = _read_log_file(fs, f"{log_dir}/{log_name}")
        plan = plan_bins(entries, options)
        if plan:
            _rewrite(fs, folder, f"{log_dir}/{log_name}", entries, plan, options, result)
            listed = set(_listed_files(fs, log_dir, _batch_names(fs, log_dir)))
            result.files_after = len(listed)
    elif batches:
        result.note = (
            f"{len(listed)} files; the log has no compaction file yet (Spark writes one every "
            "10 micro-batches), nothing is rewritten before it has"
        )
    result.deleted = len(vacuum(fs, folder, listed))
    if compactions:
        _drop_superseded_log_files(fs, log_dir, int(compactions[-1].split(".")[0]), options)
    result.seconds = time.monotonic() - began
    return result


def _drop_superseded_log_files(
    fs: AbstractFileSystem, log_dir: str, latest_compaction: int, options: Options
) -> None:
    """Delete the sink log's files before its latest compaction file (which holds all they
    list) once they are `grace_seconds` old: Spark's own rule (`fileSink.log.cleanupDelay`, 10
    minutes), which it applies only when the stream writes a compaction file, so a stream that
    stopped leaves them all. Every reader, plain ones too, lists this folder."""
    cutoff = time.time() - options.grace_seconds
    stale = []
    for info in fs.ls(log_dir, detail=True, refresh=True):
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        batch = name.removesuffix(".compact")
        if batch.isdigit() and int(batch) < latest_compaction:
            stamp = info.get("LastModified")
            if isinstance(stamp, datetime) and stamp.timestamp() < cutoff:
                stale.append(info["name"])
    if stale:
        fs.rm(stale)


def _rewrite(
    fs: AbstractFileSystem,
    folder: str,
    log_path: str,
    entries: list[dict[str, Any]],
    plan: dict[str, list[list[dict[str, Any]]]],
    options: Options,
    result: SinkCompaction,
) -> None:
    """Steps 2-4 of the module's description for one sink log compaction file."""
    replacement: dict[str, dict[str, Any] | None] = {}  # old path -> new entry (first of a bin)
    for folder_uri, bins in plan.items():
        for group in bins:
            merged = _merge(fs, group, folder_uri)
            result.rows += merged.pop("rows")
            replacement[group[0]["path"]] = merged
            replacement.update({entry["path"]: None for entry in group[1:]})
            result.merged += len(group)
            result.written += 1
        result.partitions += 1
    until = time.time() + options.grace_seconds
    retired = read_retired(fs, folder)
    retired += [Retired(_key(path), until) for path in replacement]
    write_retired(fs, folder, retired)
    rewritten = []
    for entry in entries:
        if entry["path"] not in replacement:
            rewritten.append(entry)
        elif (new := replacement[entry["path"]]) is not None:
            rewritten.append(new)
    fs.pipe_file(log_path, _log_body(rewritten))  # the commit


def compact_sinks(settings: Settings, options: Options, log: Log) -> list[SinkCompaction]:
    """Compact every sink of the stream; the caller holds the writer lock, no query runs."""
    results = []
    for sink in sinks(settings):
        result = compact_sink(settings, sink.url, sink.name, options)
        log(f"compaction: {result.line()}")
        results.append(result)
    return results


# -- on request, from a running stream ------------------------------------------------------


def _requests_path(settings: Settings, folder: str) -> str:
    return f"{location(settings, settings.purchases_url)[1]}/{folder}"


def pending_requests(settings: Settings) -> list[str]:
    """The ids of compaction requests no stream has answered yet."""
    fs, _ = location(settings, settings.purchases_url)
    try:
        names = fs.ls(_requests_path(settings, REQUESTS), detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(name.rsplit("/", 1)[-1].removesuffix(".json") for name in names)


def _answer(settings: Settings, ids: list[str], answer: dict[str, Any]) -> None:
    fs, _ = location(settings, settings.purchases_url)
    for request_id in ids:
        fs.pipe_file(
            f"{_requests_path(settings, RESULTS)}/{request_id}.json", json.dumps(answer).encode()
        )
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"{_requests_path(settings, REQUESTS)}/{request_id}.json")


@dataclass
class StreamCompactor:
    """The stream's side: notice requests (`due`), then, with the queries stopped, `serve`
    them; delete replaced files whose grace time is up (`tick`, safe while queries run: no log
    lists those files)."""

    settings: Settings
    log: Log
    lock: WriterLock
    # The sink logs' latest batch when the stream started: a lease taken over from a job that
    # may still be alive must see a batch of its own committed before the log is rewritten.
    started_at: dict[str, int] = field(default_factory=dict)
    checked: float = 0.0
    vacuum_due: float | None = None

    def __post_init__(self) -> None:
        self.started_at = {sink.url: _latest_batch(self.settings, sink) for sink in self._sinks()}

    def _sinks(self) -> list[Sink]:
        return sinks(self.settings)

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.checked < REQUEST_EVERY_SECONDS:
            return False
        self.checked = now
        try:
            return bool(pending_requests(self.settings))
        except Exception:  # S3 away: the outage watch says so; look again later
            return False

    def serve(self) -> None:
        """Answer every pending request with one compaction (queries stopped by the caller)."""
        ids = pending_requests(self.settings)
        if not ids:
            return
        options = self._options(ids)
        if self.lock.former_may_write and any(
            _latest_batch(self.settings, sink) <= self.started_at[sink.url]
            for sink in self._sinks()
        ):
            note = (
                "deferred: this stream took the writer lease over from a job that may still be "
                "alive, and compacts once it has committed a batch of its own (ask again then)"
            )
            self.log(f"compaction: {note}")
            _answer(self.settings, ids, {"error": note})
            return
        self.log(f"compaction: requested ({', '.join(ids)}); the queries are stopped meanwhile")
        try:
            results = compact_sinks(self.settings, options, self.log)
        except LabError as exc:
            _answer(self.settings, ids, {"error": str(exc)})
            self.log(f"compaction: {exc}")
            return
        _answer(self.settings, ids, {"sinks": [asdict(result) for result in results]})
        if options.grace_seconds > 0:
            self.vacuum_due = time.monotonic() + options.grace_seconds

    def _options(self, ids: list[str]) -> Options:
        """The shortest grace time asked for (a request without one: the settings')."""
        fs, _ = location(self.settings, self.settings.purchases_url)
        graces = []
        for request_id in ids:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                body = json.loads(
                    fs.cat_file(f"{_requests_path(self.settings, REQUESTS)}/{request_id}.json")
                )
                graces.append(float(body["grace_seconds"]))
        return Options.of(self.settings, min(graces) if graces else None)

    def tick(self) -> None:
        """Delete replaced files once their grace time is over."""
        if self.vacuum_due is None or time.monotonic() < self.vacuum_due:
            return
        self.vacuum_due = None
        for sink in self._sinks():
            fs, folder = location(self.settings, sink.url)
            try:
                listed = set(committed_files(self.settings, sink.url))
                gone = vacuum(fs, folder, listed)
            except Exception as exc:  # S3 away: the next compaction deletes them
                self.log(f"compaction: replaced files of {sink.name} not deleted yet ({exc})")
                continue
            if gone:
                self.log(f"compaction: {sink.name}: {len(gone)} replaced files deleted")
        for sink in self._sinks():
            fs, folder = location(self.settings, sink.url)
            with contextlib.suppress(Exception):
                if read_retired(fs, folder):
                    self.vacuum_due = time.monotonic() + REQUEST_EVERY_SECONDS * 12


def _latest_batch(settings: Settings, sink: Sink) -> int:
    fs, folder = location(settings, sink.url)
    return _latest(fs, f"{folder}/{SINK_LOG}")


# -- the command ----------------------------------------------------------------------------


def compact_lake(
    settings: Settings, *, grace_seconds: float | None = None, log: Log = print
) -> list[SinkCompaction]:
    """Compact the lake: itself when no stream holds the writer lock, else by asking the stream
    and waiting for its answer (LabError when it does not answer in time, or refuses)."""
    options = Options.of(settings, grace_seconds)
    lock = writer_lock(settings, role=COMPACTION)
    try:
        lock.acquire()
    except LockHeld as refusal:
        if refusal.role != STREAM:
            raise
        log("compaction: a stream holds the writer lock; asking it to compact")
        return _ask_stream(settings, options, log, refusal)
    try:
        if lock.former_may_write:
            raise LabError(
                "The stream's writer lease was taken over from a job that may still be alive "
                "(paused, or cut off from S3), and might still commit files: compaction waits "
                "for a stream to commit a batch of its own. Start the stream (`task up`), then "
                "run `task lake-compact` again."
            )
        lock.keep(_lease_lost)
        for sink in sinks(settings):
            removed = remove_orphans(settings, sink.url)
            if removed:
                log(f"compaction: {sink.name}: removed {len(removed)} file(s) no commit lists")
        return compact_sinks(settings, options, log)
    finally:
        lock.release()


def _lease_lost(reason: LabError) -> None:
    # A kill is safe at any step (the module's description); a compaction that lost the lease
    # must not rewrite a log another writer now appends to.
    print(f"compaction: stopped: {reason}", file=sys.stderr, flush=True)
    os._exit(1)


def _ask_stream(
    settings: Settings, options: Options, log: Log, refusal: LabError
) -> list[SinkCompaction]:
    fs, _ = location(settings, settings.purchases_url)
    request_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    request = {"grace_seconds": options.grace_seconds, "by": f"pid {os.getpid()}"}
    fs.pipe_file(
        f"{_requests_path(settings, REQUESTS)}/{request_id}.json", json.dumps(request).encode()
    )
    result_path = f"{_requests_path(settings, RESULTS)}/{request_id}.json"
    deadline = time.monotonic() + settings.lake_compact_wait_seconds
    while time.monotonic() < deadline:
        try:
            answer = json.loads(fs.cat_file(result_path))
        except FileNotFoundError:
            time.sleep(POLL_SECONDS)
            continue
        with contextlib.suppress(FileNotFoundError):
            fs.rm(result_path)
        if "error" in answer:
            raise LabError(f"The stream did not compact: {answer['error']}")
        results = [SinkCompaction(**item) for item in answer["sinks"]]
        for result in results:
            log(f"compaction (by the stream): {result.line()}")
        return results
    with contextlib.suppress(FileNotFoundError):
        fs.rm(f"{_requests_path(settings, REQUESTS)}/{request_id}.json")
    raise LabError(
        f"{refusal} It did not answer the compaction request within "
        f"{settings.lake_compact_wait_seconds:.0f} s (LAKE_COMPACT_WAIT_SECONDS): is it stuck "
        "or stopped? See .lab/logs/spark.log, or stop it and run `task lake-compact` again."
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    from app.core.config import get_settings
    from app.core.logs import setup_logging

    settings = get_settings()
    setup_logging("lake-compact", settings)
    parser = argparse.ArgumentParser(
        prog="task lake-compact",
        description="Merge the lake's small Parquet files into few per partition (safe while "
        "the stream runs: it is asked to do it between batches).",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=None,
        help="keep replaced files this long for readers that listed them just before "
        f"(default: LAKE_COMPACT_GRACE_SECONDS, {settings.lake_compact_grace_seconds:g})",
    )
    args = parser.parse_args(argv)
    try:
        compact_lake(settings, grace_seconds=args.grace_seconds)
    except LabError as exc:
        print(f"lake-compact: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # S3 away
        print(
            f"lake-compact: S3 did not answer at {settings.s3_endpoint_url} ({exc}); the lake "
            "is as it was. Run `task infra-up`, then `task lake-compact` again.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
