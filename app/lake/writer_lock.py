"""One writer per checkpoint: two jobs appending to the same commit logs would break exactly-once,
and the orphan clean-up (`sink_log.remove_orphans`) would delete the other job's files in flight.

A checkpoint on local disk is guarded by an `fcntl` lock, which the kernel drops when the process
dies. A checkpoint on S3 is guarded by a lease object next to it (`writer.lease`), written with
S3's conditional PUT: `If-None-Match: *` creates it only if absent, `If-Match: <etag>` renews or
takes it over only if nobody wrote it in between. Amazon S3, MinIO (since 2024-08) and the Versity
S3 Gateway (v1.8) honour both. The holder renews the lease every third of its time-out; it is
taken over when it was not renewed within the time-out (judged by the S3 server's clock: its
`Last-Modified` against its `Date`), or at once when its holder was on this host and is gone.
A holder that cannot renew it for three quarters of the time-out (S3 away) stops writing until
it holds it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Protocol

import psutil  # type: ignore[import-untyped]  # no stubs installed

from app.core.clients import s3_filesystem
from app.core.config import Settings
from app.core.errors import LabError
from app.lake.storage import is_s3, join_url, location

LEASE_NAME = "writer.lease"
LOCK_NAME = "job.lock"
# Lease requests give up after this long, so a renewal never holds the stream up while S3 is away.
REQUEST_TIMEOUT_SECONDS = 5.0


class LeaseLost(LabError):
    """Another job took the checkpoint over: this one must stop writing at once."""


class LeaseUnreachable(Exception):
    """The lease could not be renewed within its time-out because S3 does not answer."""


class WriterLock(Protocol):
    def acquire(self) -> None:
        """Take the checkpoint (or keep it, if held), or raise LabError saying who holds it."""

    def renew(self) -> None:
        """Keep holding it; LeaseLost if another job took it, LeaseUnreachable if expired."""

    def release(self) -> None:
        """Let it go (no error if not held)."""


def writer_lock(settings: Settings, checkpoint: str | None = None) -> WriterLock:
    """The lock that fits where the checkpoint is: a lease on S3, a file lock on local disk."""
    checkpoint = checkpoint or settings.checkpoint_dir
    if is_s3(checkpoint):
        return S3Lease(settings, checkpoint)
    return FileLock(Path(location(settings, checkpoint)[1]))


def _refusal(checkpoint: str, holder: str) -> LabError:
    return LabError(
        f"Another stream job is running on the checkpoint {checkpoint} ({holder}). It keeps the "
        "lake up to date already; stop it first (the Procfile's `spark` process?) if you want to "
        "run this one."
    )


class FileLock:
    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        if self._handle is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "its lock file is held"
            handle.close()
            raise _refusal(str(self.path.parent), holder) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle

    def renew(self) -> None:
        """The kernel holds a file lock until the process ends: nothing to renew."""

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the lock
            self._handle = None


def _holder_gone(meta: dict[str, str]) -> bool:
    """True when the lease's holder ran on this host and its process is gone (a reused pid is
    told apart by its start time)."""
    if meta.get("host") != socket.gethostname():
        return False
    try:
        started: float = psutil.Process(int(meta.get("pid", "0"))).create_time()
    except (psutil.NoSuchProcess, ValueError):
        return True
    return abs(started - float(meta.get("started", "0"))) > 1


def _describe(meta: dict[str, str]) -> str:
    return f"pid {meta.get('pid', '?')} on {meta.get('host', '?')}, since {meta.get('since', '?')}"


class S3Lease:
    def __init__(self, settings: Settings, checkpoint: str) -> None:
        self.checkpoint = checkpoint
        self.timeout = settings.spark_writer_lease_seconds
        self.fs = s3_filesystem(settings, timeout=REQUEST_TIMEOUT_SECONDS)
        self.bucket, self.key = join_url(checkpoint, LEASE_NAME).split("://", 1)[1].split("/", 1)
        self.meta = {
            "owner": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "started": str(psutil.Process().create_time()),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.etag: str | None = None
        self.renewed = 0.0

    def _put(self, **condition: str) -> bool:
        """Write the lease under a condition; False when the condition does not hold."""
        try:
            answer = self.fs.call_s3(
                "put_object",
                Bucket=self.bucket,
                Key=self.key,
                Body=json.dumps(self.meta).encode(),
                Metadata=self.meta,
                **condition,
            )
        except (FileExistsError, FileNotFoundError):
            return False  # 412 on If-None-Match; 404 on If-Match of a deleted lease
        except OSError as exc:
            if "pre-condition" in str(exc) or "Precondition" in str(exc):
                return False
            raise
        self.etag = answer["ETag"]
        self.renewed = time.monotonic()
        return True

    def _current(self) -> tuple[str, dict[str, str], float] | None:
        """The lease as S3 holds it: (etag, holder, seconds since its last renewal)."""
        try:
            head: dict[str, Any] = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None
        now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (now - head["LastModified"]).total_seconds()
        return head["ETag"], dict(head.get("Metadata", {})), age

    def acquire(self) -> None:
        if self._put(IfNoneMatch="*"):
            return
        current = self._current()
        if current is None:  # released in between
            if self._put(IfNoneMatch="*"):
                return
            raise _refusal(self.checkpoint, "it took the lease a moment ago")
        etag, holder, age = current
        free = (
            holder.get("owner") == self.meta["owner"] or age > self.timeout or _holder_gone(holder)
        )
        if not (free and self._put(IfMatch=etag)):
            raise _refusal(
                self.checkpoint,
                f"{_describe(holder)}; its lease s3://{self.bucket}/{self.key} was renewed "
                f"{age:.0f} s ago and is free {self.timeout:.0f} s after its last renewal",
            )

    def renew(self) -> None:
        since = time.monotonic() - self.renewed
        if self.etag is None or since < self.timeout / 3:
            return
        try:
            if self._put(IfMatch=self.etag):
                return
        except Exception as exc:  # S3 unreachable: connection refused, time-out, 5xx
            # Stop writing well before another job may take the lease over (at `timeout`).
            if since > self.timeout * 3 / 4:
                raise LeaseUnreachable(
                    f"S3 did not renew the writer lease for {since:.0f} s ({exc})"
                ) from exc
            return  # try again on the next call
        current = self._current()
        holder = _describe(current[1]) if current else "nobody"
        raise LeaseLost(
            f"The writer lease of {self.checkpoint} was taken over ({holder} holds it now): "
            "this stream stopped writing so that only one job writes the lake."
        )

    def release(self) -> None:
        if self.etag is None:
            return
        # Best effort: a lease left behind (S3 away, taken over) lapses or is taken over anyway.
        with contextlib.suppress(Exception):
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        self.etag = None
