"""The commit logs of a file sink and of its checkpoint: which files count, whether they agree.

A file-sink query keeps two logs. Its checkpoint logs the offsets of each micro-batch before the
batch runs (`offsets/N`) and marks it done after (`commits/N`); the sink's `_spark_metadata/N`
lists the files batch N wrote, and a batch's files count only once they are listed there. On
restart Spark re-runs the last planned batch unless it is marked done, and the sink skips every
batch id at or below its log's latest. So the two logs must describe the same history: a
checkpoint lost while the sink log stays makes Spark skip new batches silently, a sink log lost
while the checkpoint stays leaves committed batches out of the lake for good.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from fsspec import AbstractFileSystem

from app.core.config import Settings
from app.lake.retired import retained
from app.lake.storage import join_url, location

SINK_LOG = "_spark_metadata"
RESET_COMMAND = "task lake-reset"


def _batch_names(fs: AbstractFileSystem, folder: str) -> list[tuple[int, str]]:
    """(batch id, file name) of a Spark metadata log folder, oldest first; none if no folder.
    Every tenth sink-log file is a compaction (`N.compact`); temp and checksum files are skipped."""
    try:
        names = [path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(
        (int(name.removesuffix(".compact")), name)
        for name in names
        if name.removesuffix(".compact").isdigit()
    )


def _latest(fs: AbstractFileSystem, folder: str) -> int:
    return max((batch for batch, _ in _batch_names(fs, folder)), default=-1)


def _key(url: str) -> str:
    # The log holds URIs (`s3a://bucket/key` with `%` escapes); s3fs lists `bucket/key`.
    return unquote(url.split("://", 1)[-1])


def _listed_files(
    fs: AbstractFileSystem, log_dir: str, batches: list[tuple[int, str]]
) -> list[str]:
    """The data files the log entries `batches` (as `_batch_names` lists them) commit."""
    # A compaction holds every entry so far, so reading starts at the latest one.
    start = max((batch for batch, name in batches if name.endswith(".compact")), default=0)
    files: dict[str, None] = {}
    for batch, name in batches:
        if batch < start:
            continue
        for line in fs.cat_file(f"{log_dir}/{name}").decode().splitlines()[1:]:
            entry = json.loads(line)
            if entry.get("action") == "delete":
                files.pop(_key(entry["path"]), None)
            else:
                files[_key(entry["path"])] = None
    return list(files)


def committed_files(settings: Settings, url: str) -> list[str]:
    """The data files a file sink has committed (its `_spark_metadata` log), as s3 keys.

    A reader that lists the folder instead would also see files of a batch cut short by a
    crash, were they not removed at the stream's next start; Spark reads this log itself,
    pyarrow and s3fs readers may use this function.
    """
    fs, folder = location(settings, url)
    log_dir = f"{folder}/{SINK_LOG}"
    return _listed_files(fs, log_dir, _batch_names(fs, log_dir))


def committed_rows(settings: Settings, url: str) -> int:
    """How many rows the committed files of the sink at `url` hold (their footers only)."""
    import pyarrow.dataset as ds

    files = committed_files(settings, url)
    if not files:
        return 0
    fs, _ = location(settings, url)
    return int(ds.dataset(files, filesystem=fs, format="parquet").count_rows())


def _data_files(fs: AbstractFileSystem, folder: str) -> dict[str, dict[str, Any]]:
    """Every data file under a sink folder with its listing, as a plain reader would list it:
    files and folders whose names start with `_` or `.` (the sink log, markers) are not data, to
    Spark or pyarrow."""
    try:
        found: dict[str, dict[str, Any]] = fs.find(folder, detail=True)
    except FileNotFoundError:
        return {}
    return {
        path: info
        for path, info in found.items()
        if not path.endswith("/")
        and not any(part.startswith(("_", ".")) for part in path[len(folder) :].split("/"))
    }


def folder_files(settings: Settings, url: str) -> list[str]:
    """Every data file under a sink folder, as a plain reader would list it."""
    fs, folder = location(settings, url)
    return list(_data_files(fs, folder))


def orphan_files(settings: Settings, url: str) -> list[str]:
    """Data files in a sink folder that no commit lists: what an attempt cut short left behind
    (not the files a compaction replaced, during their grace time: `app.lake.retired`)."""
    fs, folder = location(settings, url)
    keep = set(committed_files(settings, url)) | retained(fs, folder)
    return [path for path in folder_files(settings, url) if path not in keep]


def remove_orphans(settings: Settings, url: str) -> list[str]:
    """Delete the orphan files of a sink folder; only safe while no process can still commit
    to it (the caller holds the writer lock, its former holder is gone, and the caller has not
    started its queries). Otherwise use `remove_stale_orphans`."""
    orphans = orphan_files(settings, url)
    if orphans:
        fs, _ = location(settings, url)
        fs.rm(orphans)
    return orphans


def _second(info: dict[str, Any]) -> int:
    """The whole second, on the storage's clock, a listed file was written."""
    stamp = info["LastModified"] if "LastModified" in info else info["mtime"]  # s3fs | local
    return int(stamp.timestamp() if isinstance(stamp, datetime) else float(stamp))


def remove_stale_orphans(settings: Settings, url: str) -> tuple[list[str], list[str]]:
    """Delete the orphan files nobody can commit any more, even a former writer that is still
    alive (paused, or cut off from S3, after its writer lease was taken over); (removed, kept).

    An orphan is stale when it was written in an earlier second than the sink log's latest entry
    (batch L), both by the storage server's clock. Why nobody can commit it: a file is written
    by an attempt at some batch. An attempt at a batch after L starts only once the log holds L
    (a query plans batch L+1 after batch L is committed, by itself or, for a batch it skips, by
    another writer), so all its files are written after L's entry; a stale orphan was written
    before, so it belongs to a batch at or below L. Each batch id is committed once (the log's
    files are created only if absent; a second commit of a batch fails the query that tries), and
    every batch up to L is committed without it. No writer's clock, and no bound on how long a
    writer may stay paused, enters the argument. The committed files and L's time are read from
    one listing of the log, so a commit landing meanwhile cannot make its files look stale.

    Kept orphans (written in L's second or after) may belong to a batch in flight; they become
    stale once a later batch is committed."""
    fs, folder = location(settings, url)
    log_dir = f"{folder}/{SINK_LOG}"
    batches = _batch_names(fs, log_dir)
    committed = set(_listed_files(fs, log_dir, batches)) | retained(fs, folder)
    files = _data_files(fs, folder)
    orphans = {path: info for path, info in files.items() if path not in committed}
    if not batches:
        return [], list(orphans)
    latest = _second(fs.info(f"{log_dir}/{batches[-1][1]}"))
    stale = [path for path, info in orphans.items() if _second(info) < latest]
    if stale:
        fs.rm(stale)
    return stale, [path for path in orphans if path not in stale]


@dataclass(frozen=True)
class LogState:
    """The latest batch id of each log (-1: no entry)."""

    sink: int  # the sink's `_spark_metadata`
    planned: int  # the checkpoint's `offsets`
    done: int  # the checkpoint's `commits`

    def agree(self) -> bool:
        # Equal, or the sink committed the last planned batch and the process died before
        # the checkpoint marked it done (Spark then re-runs it and the sink skips it).
        return self.sink == self.done or self.sink == self.done + 1 == self.planned


def log_state(settings: Settings, url: str, checkpoint: str) -> LogState:
    sink_fs, sink_folder = location(settings, url)
    checkpoint_fs, checkpoint_folder = location(settings, checkpoint)
    return LogState(
        sink=_latest(sink_fs, f"{sink_folder}/{SINK_LOG}"),
        planned=_latest(checkpoint_fs, f"{checkpoint_folder}/offsets"),
        done=_latest(checkpoint_fs, f"{checkpoint_folder}/commits"),
    )


def disagreement(settings: Settings, url: str, checkpoint: str) -> str | None:
    """None when the sink log and the checkpoint describe the same history, else what is wrong
    and what to run, naming both."""
    state = log_state(settings, url, checkpoint)
    if state.agree():
        return None
    sink_log = join_url(url, SINK_LOG)
    if state.done < 0 and state.planned < 0:
        what = (
            f"the sink log {sink_log} is at batch {state.sink} but there is no checkpoint at "
            f"{checkpoint}: Spark would skip every new micro-batch up to {state.sink}, and those "
            "orders would never land"
        )
    elif state.sink < 0:
        what = (
            f"the checkpoint {checkpoint} has finished batch {state.done} but there is no sink "
            f"log at {sink_log}: the lake folder was emptied while the checkpoint was kept, so "
            "the orders it held would not be written again"
        )
    else:
        what = (
            f"the sink log {sink_log} is at batch {state.sink} but the checkpoint {checkpoint} "
            f"finished batch {state.done} (planned {state.planned}): they are not from the same "
            "run, and Spark would skip or lose orders"
        )
    return (
        f"The checkpoint and the lake disagree: {what}. Nothing was written. Reset both together "
        f"with `{RESET_COMMAND}` (it removes the checkpoints and the lake's purchases and "
        "quarantine folders; Kafka still holds the orders it retains, and the stream writes them "
        "again)."
    )
