"""Probe of the purchases stream: its last committed batch, and whether a job is writing.

Spark's progress is read from the stream's checkpoint rather than from Spark's REST API: the REST
API (`/api/v1`) has no Structured Streaming progress (its streaming endpoints are the old
DStreams'), the UI's port moves (4040, 4041, ...) and vanishes when the job stops, while the
checkpoint (in the lake's bucket, or on local disk) survives restarts and is the very record of
what is committed. Each micro-batch writes `offsets/<id>` (the Kafka end offsets it will read)
when it starts and `commits/<id>` when its files are committed, so the two files' times give its
duration (to the second on S3) and the offsets give its row count.
"""

from __future__ import annotations

import json
import os
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem

from app.console.probes import Reading
from app.core.clients import s3_filesystem
from app.core.config import Settings
from app.lake.gaps import recorded_gaps
from app.lake.queries import sinks
from app.lake.storage import is_s3, join_url, location
from app.lake.writer_lock import LEASE_NAME, LOCK_NAME

NOT_RUNNING = "no stream job holds the checkpoint (the Procfile's `spark` process is not running)"


def _batch_ids(fs: AbstractFileSystem, folder: str) -> list[int]:
    try:
        names = [path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


def _offset_total(fs: AbstractFileSystem, path: str) -> int:
    # Line 1 is the log version, line 2 the batch's metadata, then one JSON per source:
    # {"<topic>": {"<partition>": <end offset>, ...}}.
    total = 0
    for line in fs.cat_file(path).decode().splitlines()[2:]:
        for partitions in json.loads(line).values():
            total += sum(partitions.values())
    return total


def _modified(fs: AbstractFileSystem, path: str) -> float:
    return float(fs.modified(path).timestamp())


def _lease_is_live(settings: Settings, checkpoint: str) -> bool:
    # The rule of `app.lake.writer_lock.S3Lease`: held while renewed within its time-out, judged
    # by the S3 server's clock (Last-Modified against Date). A released lease is deleted.
    bucket, key = join_url(checkpoint, LEASE_NAME).split("://", 1)[1].split("/", 1)
    fs = s3_filesystem(settings, timeout=3)
    try:
        head: dict[str, Any] = fs.call_s3("head_object", Bucket=bucket, Key=key)
    except FileNotFoundError:
        return False
    now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
    age: float = (now - head["LastModified"]).total_seconds()
    return age <= settings.spark_writer_lease_seconds


def _file_lock_is_held(folder: Path) -> bool | None:
    # Read from the kernel's lock table, never by taking the lock: a probe holding it even for
    # a moment could make a starting job give up. None where there is no /proc/locks.
    locks, lock_file = Path("/proc/locks"), folder / LOCK_NAME
    if not locks.exists():
        return None
    if not lock_file.exists():
        return False
    info = lock_file.stat()
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    return any(device in line.split() for line in locks.read_text().splitlines())


def stream_job_running(settings: Settings) -> bool | None:
    """Whether a stream job holds the checkpoint (`app.lake.writer_lock`); None when unknown."""
    checkpoint = settings.checkpoint_dir
    if is_s3(checkpoint):
        return _lease_is_live(settings, checkpoint)
    return _file_lock_is_held(Path(location(settings, checkpoint)[1]))


def lost_offsets(settings: Settings) -> int:
    """Offsets of the purchases query acknowledged as lost past Kafka's retention (`task
    lake-ack-gap`): orders that never reached the lake."""
    name = sinks(settings)[0].name
    return sum(int(gap["lost"]) for gap in recorded_gaps(settings) if gap["sink"] == name)


def spark_reading(settings: Settings) -> Reading:
    """The purchases query's last committed batch: id, rows, duration, rows/s, freshness; and
    the offsets acknowledged as lost (`lost_offsets`)."""
    checkpoint = sinks(settings)[0].checkpoint
    down = NOT_RUNNING if stream_job_running(settings) is False else None
    fs, folder = location(settings, checkpoint)
    commits = _batch_ids(fs, f"{folder}/commits")
    lost = lost_offsets(settings)
    if not commits:
        return Reading({"checkpoint": checkpoint, "batch": None, "lost_offsets": lost}, down=down)
    batch = commits[-1]
    planned = _batch_ids(fs, f"{folder}/offsets")
    offsets = f"{folder}/offsets/{batch}"
    started = _modified(fs, offsets)
    committed = _modified(fs, f"{folder}/commits/{batch}")
    read = _offset_total(fs, offsets)
    previous = f"{folder}/offsets/{batch - 1}" if batch - 1 in planned else None
    rows = read - (_offset_total(fs, previous) if previous else 0)
    duration = max(committed - started, 1e-3)
    figures: dict[str, Any] = {
        "checkpoint": checkpoint,
        "batch": batch,
        "rows": rows,
        "duration": round(duration, 2),
        "rows_per_second": round(rows / duration, 1),
        "committed_ago": round(time.time() - committed, 1),
        "running": planned[-1] > batch,
        "lost_offsets": lost,
    }
    # A record that reached Kafka just after the previous batch fixed its end offsets waits for
    # this batch, and is readable once it commits: the longest POST-to-readable of this batch.
    if previous:
        figures["freshness"] = round(committed - _modified(fs, previous), 1)
    return Reading(figures, {"spark_rows": read}, down=down)
