"""Files a compaction replaced: kept for a grace time, then deleted.

When a compaction (`app.lake.compaction`) rewrites the sink log, the small files it merged stop
being listed at that instant, for every reader that opens the log afterwards. A reader that opened
it just before (a Spark job that planned its read, `committed_files` then pyarrow) may still open
them, so they are deleted only `LAKE_COMPACT_GRACE_SECONDS` later. Until then they are listed in
`_compaction/retired.json` beside the sink log, with the time each may go; the orphan clean-up
(`app.lake.sink_log`) leaves such files alone, and `vacuum` deletes them once their time is up.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from fsspec import AbstractFileSystem

COMPACTION_FOLDER = "_compaction"
RETIRED_NAME = "retired.json"


@dataclass(frozen=True)
class Retired:
    key: str  # the file, as s3fs names it (`bucket/key`)
    until: float  # Unix time from which it may be deleted


def _path(folder: str) -> str:
    return f"{folder}/{COMPACTION_FOLDER}/{RETIRED_NAME}"


def read_retired(fs: AbstractFileSystem, folder: str) -> list[Retired]:
    """The retired files of the sink folder `folder` (none when there is no manifest)."""
    try:
        data: dict[str, Any] = json.loads(fs.cat_file(_path(folder)))
    except FileNotFoundError:
        return []
    return [Retired(item["key"], float(item["until"])) for item in data["files"]]


def write_retired(fs: AbstractFileSystem, folder: str, files: list[Retired]) -> None:
    body = json.dumps({"files": [asdict(item) for item in files]}, indent=1)
    fs.pipe_file(_path(folder), body.encode())


def retained(fs: AbstractFileSystem, folder: str) -> set[str]:
    """Retired files whose grace time is not over: not to be deleted yet, even unlisted."""
    now = time.time()
    return {item.key for item in read_retired(fs, folder) if item.until > now}


def vacuum(fs: AbstractFileSystem, folder: str, listed: set[str]) -> list[str]:
    """Delete the retired files whose time is up; return them. A record of a file the log still
    lists (`listed`) is from a compaction that did not reach its commit: the file is live, and
    the record is dropped. Only the holder of the writer lock may call this."""
    records = read_retired(fs, folder)
    if not records:
        return []
    now = time.time()
    due = [item.key for item in records if item.key not in listed and item.until <= now]
    present = [key for key in due if fs.exists(key)]  # the orphan clean-up may have been first
    if present:
        fs.rm(present)
    left = [item for item in records if item.key not in listed and item.until > now]
    if len(left) != len(records):
        write_retired(fs, folder, left)
    return due
