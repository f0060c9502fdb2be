"""One writer per checkpoint: two jobs appending to the same commit logs would break exactly-once,
and the orphan clean-up (`sink_log.remove_orphans`) would delete the other job's files in flight.

A checkpoint on local disk is guarded by an `fcntl` lock, which the kernel drops when the process
dies. A checkpoint on S3 is guarded by a lease object next to it (`writer.lease`), written with
S3's conditional PUT: `If-None-Match: *` creates it only if absent, `If-Match: <etag>` renews or
takes it over only if nobody wrote it in between. Amazon S3, MinIO (since 2024-08) and the Versity
S3 Gateway (v1.8) honour both. Each write carries a new renewal number, so each has a new ETag: a
job that saw the lease lapsed cannot take it over once its holder has renewed it since (with the
same body the ETag would not change, and the stale `If-Match` would succeed).

The holder renews the lease every third of its time-out, on a thread of its own (`keep`), so no
Spark call holds a renewal up; it is taken over when it was not renewed within the time-out
(judged by the S3 server's clock: its `Last-Modified` against its `Date`), or at once when its
holder was on this host and is gone. The holder gives up writing when the lease is taken over
(a renewal's `If-Match` fails) or when it has not renewed it for three quarters of the time-out
(S3 away, or the process was paused): a second thread looks at the local clock ten times a
second, so a process resumed after a pause learns it before any network round trip. `keep`'s
caller then kills its writers at once (`app.lake.stream`): stopping them politely would let the
batch in flight commit beside the new holder.

A lease may be taken over from a holder that is still alive (paused, or cut off from S3), which
cannot be told from a dead one; `S3Lease.former_may_write` says so, and the orphan clean-up
(`app.lake.sink_log.remove_stale_orphans`) then keeps the files that holder may still commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
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
# How long `release` waits for a lost lease's handler to end the process (it asks S3 who holds
# the lease: one request, bounded by REQUEST_TIMEOUT_SECONDS).
LOSING_WAIT_SECONDS = 2 * REQUEST_TIMEOUT_SECONDS
# How often the lease's watchdog looks at the time since the last renewal.
WATCH_EVERY_SECONDS = 0.1


class LeaseLost(LabError):
    """Another job took the checkpoint over: this one must stop writing at once."""


class LeaseUnreachable(LabError):
    """The lease was not renewed for three quarters of its time-out (S3 away, or this process
    paused): another job may take it over soon, so this one must stop writing at once."""


# Called once, on a thread of the lock's own, when the lock is lost; it is expected to stop the
# process's writers at once (and usually to end the process).
OnLost = Callable[[LabError], None]


class WriterLock(Protocol):
    # True when the lock was taken over from a holder that may still be alive and writing.
    former_may_write: bool

    def acquire(self) -> None:
        """Take the checkpoint (or keep it, if held), or raise LabError saying who holds it."""

    def keep(self, on_lost: OnLost) -> None:
        """Hold it until `release`, calling `on_lost` once if it is lost meanwhile."""

    def holder(self) -> str | None:
        """Another job that holds the checkpoint now, in words; None if none is known to."""

    def release(self) -> None:
        """Let it go (no error if not held)."""


STREAM = "stream"
COMPACTION = "compaction"  # `app.lake.compaction`: holds the lock for seconds


class LockHeld(LabError):
    """Another job holds the lock; `role` says what it is (`STREAM` or `COMPACTION`)."""

    def __init__(self, message: str, role: str) -> None:
        super().__init__(message)
        self.role = role


def writer_lock(
    settings: Settings, checkpoint: str | None = None, role: str = STREAM
) -> WriterLock:
    """The lock that fits where the checkpoint is: a lease on S3, a file lock on local disk.
    `role` tells a job refused the lock what holds it."""
    checkpoint = checkpoint or settings.checkpoint_dir
    if is_s3(checkpoint):
        return S3Lease(settings, checkpoint, role)
    return FileLock(Path(location(settings, checkpoint)[1]), role)


def _refusal(checkpoint: str, holder: str, role: str) -> LockHeld:
    if role == COMPACTION:
        return LockHeld(
            f"A lake compaction holds the writer lock of the checkpoint {checkpoint} ({holder}); "
            "it takes seconds. Run this again once it is done.",
            role,
        )
    return LockHeld(
        f"Another stream job is running on the checkpoint {checkpoint} ({holder}). It keeps the "
        "lake up to date already; stop it first (the Procfile's `spark` process?) if you want to "
        "run this one.",
        role,
    )


class FileLock:
    # The kernel drops a file lock only when its holder's process is gone.
    former_may_write = False

    def __init__(self, folder: Path, role: str = STREAM) -> None:
        self.path = folder / LOCK_NAME
        self.role = role
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
            role = COMPACTION if holder.startswith(COMPACTION) else STREAM
            raise _refusal(str(self.path.parent), holder, role) from None
        handle.truncate(0)
        handle.write(f"{self.role}: pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle

    def keep(self, on_lost: OnLost) -> None:
        """The kernel holds a file lock until the process ends: it cannot be lost."""

    def holder(self) -> str | None:
        return None

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
    return (
        f"{meta.get('role', STREAM)}: pid {meta.get('pid', '?')} on {meta.get('host', '?')}, "
        f"since {meta.get('since', '?')}"
    )


class S3Lease:
    def __init__(self, settings: Settings, checkpoint: str, role: str = STREAM) -> None:
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
            "renewal": "0",
            "role": role,
        }
        self.etag: str | None = None
        self.renewed = 0.0
        self.former_may_write = False
        self._writing = threading.Lock()  # one PUT at a time: `acquire`, `renew`, `release`
        self._stopped = threading.Event()
        # Set when `keep` calls its `on_lost`, which ends the process itself.
        self._losing = threading.Event()

    def _put(self, **condition: str) -> bool:
        """Write the lease under a condition, with the next renewal number (so a new ETag);
        False when the condition does not hold."""
        with self._writing:
            meta = {**self.meta, "renewal": str(int(self.meta["renewal"]) + 1)}
            try:
                answer = self.fs.call_s3(
                    "put_object",
                    Bucket=self.bucket,
                    Key=self.key,
                    Body=json.dumps(meta).encode(),
                    Metadata=meta,
                    **condition,
                )
            except (FileExistsError, FileNotFoundError):
                return False  # 412 on If-None-Match; 404 on If-Match of a deleted lease
            except OSError as exc:
                if "pre-condition" in str(exc) or "Precondition" in str(exc):
                    return False
                raise
            self.meta = meta
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
        if self.etag is not None:
            return  # held: `keep` renews it, or reports its loss
        if self._put(IfNoneMatch="*"):
            return
        current = self._current()
        if current is None:  # released in between
            if self._put(IfNoneMatch="*"):
                return
            raise _refusal(self.checkpoint, "it took the lease a moment ago", STREAM)
        etag, holder, age = current
        mine = holder.get("owner") == self.meta["owner"]
        gone = _holder_gone(holder)
        if not ((mine or gone or age > self.timeout) and self._put(IfMatch=etag)):
            raise _refusal(
                self.checkpoint,
                f"{_describe(holder)}; its lease s3://{self.bucket}/{self.key} was renewed "
                f"{age:.0f} s ago and is free {self.timeout:.0f} s after its last renewal",
                holder.get("role", STREAM),
            )
        # A holder that let its lease lapse may only be paused or cut off from S3, and resume
        # writing; one whose process is gone from this host cannot (its JVM exits with it).
        self.former_may_write = not (mine or gone)

    def renew(self) -> None:
        """Renew the lease now; LeaseLost if another job took it over (or deleted it)."""
        if self.etag is None:
            return
        if self._put(IfMatch=self.etag):
            return
        current = self._current()
        if current is not None and current[1].get("owner") == self.meta["owner"]:
            # Our last renewal went through but its answer was lost (a time-out): the lease S3
            # holds is still ours, under an ETag we did not see.
            if self._put(IfMatch=current[0]):
                return
            current = self._current()
        raise LeaseLost(
            f"The writer lease of {self.checkpoint} was "
            + (f"taken over by {_describe(current[1])}" if current else "deleted")
        )

    def keep(self, on_lost: OnLost) -> None:
        """Renew the lease every third of its time-out and watch it, each on a daemon thread,
        until `release`; call `on_lost` once when a renewal finds it taken over or when it has
        not been renewed for three quarters of its time-out."""
        fired = threading.Lock()
        failed = ""  # the last renewal's error, if it failed

        def lost(reason: LabError) -> None:
            if not self._stopped.is_set() and fired.acquire(blocking=False):
                self._losing.set()
                on_lost(reason)

        def renew_when_due() -> None:
            nonlocal failed
            while not self._stopped.wait(min(1.0, self.timeout / 6)):
                if time.monotonic() - self.renewed < self.timeout / 3:
                    continue
                try:
                    self.renew()
                    failed = ""
                except LeaseLost as exc:
                    lost(exc)
                    return
                except Exception as exc:  # S3 away: try again; the watchdog acts if that lasts
                    failed = f": {exc}"

        def watch() -> None:
            while not self._stopped.wait(WATCH_EVERY_SECONDS):
                since = time.monotonic() - self.renewed
                if since > self.timeout * 3 / 4:
                    lost(
                        LeaseUnreachable(
                            f"The writer lease of {self.checkpoint} was not renewed for "
                            f"{since:.0f} s (S3 did not answer{failed}, or this process was "
                            f"paused): another job may take it over {self.timeout:.0f} s after "
                            "its last renewal"
                        )
                    )
                    return

        for target in (renew_when_due, watch):
            threading.Thread(target=target, name=f"lease-{target.__name__}", daemon=True).start()

    def holder(self) -> str | None:
        try:
            current = self._current()
        except Exception:  # S3 away: nobody can be told apart from somebody
            return None
        if current is None or current[1].get("owner") == self.meta["owner"]:
            return None
        return _describe(current[1])

    def release(self) -> None:
        if self._losing.is_set():
            # `on_lost` is killing the JVM and saying why, then ends the process: the main
            # thread (whose calls into the killed JVM fail) must not end it first, unheard.
            time.sleep(LOSING_WAIT_SECONDS)
        self._stopped.set()
        if self.etag is None:
            return
        # Best effort: a lease left behind (S3 away, taken over) lapses or is taken over anyway.
        with self._writing, contextlib.suppress(Exception):
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        self.etag = None
