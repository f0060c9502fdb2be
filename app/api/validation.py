"""Validating request bodies without stalling the event loop.

pydantic holds the GIL while it validates, so a thread would not free the event loop: a 2 MiB
object of unknown keys takes about a second to refuse (one error per key), and a valid batch of
1,000 orders about 20 ms to validate and serialise. Bodies up to `INLINE_BYTES` (at worst a few
ms) are validated on the event loop; larger ones in a small pool of worker processes
(`API_VALIDATION_WORKERS` at once), scheduled apart from the API (see `_start_worker`) so that
the event loop keeps its CPU while a worker chews on a large body.

The line in front of the workers is bounded twice, so a flood of large bodies (junk or not)
cannot make every later batch wait without end: at most `API_VALIDATION_QUEUE` bodies wait (one
more gets a 503 at once), and a body that waited `API_VALIDATION_WAIT_SECONDS` for a worker gets
a 503 then. Both say `Retry-After`; nothing of such a body was stored. Bodies are taken in their
order of arrival, so a batch that gets in line is validated before anything that came later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from app.api.errors import ApiError
from app.api.ingest import BodyKind, KafkaRecords, RecordParser
from app.core.config import Settings
from app.core.process import when_parent_exits

log = logging.getLogger(__name__)

# Measured: refusing 16 KiB of unknown keys takes ~2 ms, validating 16 KiB of orders less.
INLINE_BYTES = 16 * 1024
WORKER_NICENESS = 10

_worker_parser: RecordParser | None = None  # in a worker process: its own parser


def _start_worker(max_batch: int) -> None:
    """Set up a worker process: its own parser, scheduled apart from the event loop."""
    global _worker_parser
    # Linux (autogroup) shares the CPU between sessions first: a busy worker in the API's
    # session would spend the event loop's share, however nice. In a session of its own it
    # competes with the API as another program would (measured: other clients' p99 under junk
    # bodies about halved). Where sessions are not scheduled apart, the niceness does that.
    # Ctrl-C in a terminal then reaches the API alone, which stops the pool.
    os.setsid()
    os.nice(WORKER_NICENESS)
    _worker_parser = RecordParser(max_batch)
    # Else a worker of a killed API would wait on the pool's queue forever.
    when_parent_exits(lambda: os._exit(1))


def _validate_in_worker(kind: BodyKind, body: bytes) -> KafkaRecords | ApiError:
    """Runs in a worker. A refusal is returned, not raised: no traceback to format and ship."""
    assert _worker_parser is not None, "the pool's initializer builds the parser"
    try:
        return _worker_parser.records(kind, body)
    except ApiError as refusal:
        return refusal


def _warm_up() -> None:
    """Nothing: submitting it starts a worker before the first large body needs one."""


class BodyValidator:
    """Turns request bodies into Kafka records: small ones inline, large ones in workers."""

    def __init__(self, settings: Settings) -> None:
        self.parser = RecordParser(settings.api_max_batch)
        self.workers = settings.api_validation_workers_per_process
        self.queue_limit = settings.api_validation_queue
        self.wait_seconds = settings.api_validation_wait_seconds
        self._pool: ProcessPoolExecutor | None = None
        # Admission to the pool: its own queue is unbounded and cannot drop a body that waited
        # too long once submitted, so bodies wait here (FIFO) and the pool gets one per worker.
        self._free_workers = asyncio.Semaphore(self.workers)
        self._waiting = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the API process runs librdkafka's threads, which a fork would copy.
        pool = ProcessPoolExecutor(
            self.workers,
            mp_context=get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.parser.max_batch,),
        )
        for _ in range(self.workers):
            pool.submit(_warm_up)
        return pool

    def start(self) -> None:
        """Start the workers (in the background: startup does not wait for them)."""
        self._pool = self._new_pool()

    async def records(self, kind: BodyKind, body: bytes) -> KafkaRecords:
        """The body's records as Kafka stores them; raises ApiError for a refused body."""
        if len(body) <= INLINE_BYTES:
            return self.parser.records(kind, body)
        async with self._worker_turn():
            return await self._in_worker(kind, body)

    @contextlib.asynccontextmanager
    async def _worker_turn(self) -> AsyncIterator[None]:
        """Hold one of the workers; a 503 when the line is full or the wait runs out."""
        if self._free_workers.locked():
            if self._waiting >= self.queue_limit:
                raise self._busy(f"{self._waiting} large bodies are already waiting")
            self._waiting += 1
            try:
                await asyncio.wait_for(self._free_workers.acquire(), self.wait_seconds)
            except TimeoutError:
                raise self._busy(f"this body waited {self.wait_seconds:g} s") from None
            finally:
                self._waiting -= 1
        else:
            await self._free_workers.acquire()
        try:
            yield
        finally:
            self._free_workers.release()

    def _busy(self, why: str) -> ApiError:
        retry_after = max(1, math.ceil(self.wait_seconds / 2))
        return ApiError(
            503,
            f"The API's validation workers are busy with large bodies ({why}); nothing of this "
            f"request was stored. Retry after {retry_after} s, or send smaller batches (bodies up "
            f"to {INLINE_BYTES // 1024} KiB do not wait for a worker).",
            headers={"Retry-After": str(retry_after)},
        )

    async def _in_worker(self, kind: BodyKind, body: bytes) -> KafkaRecords:
        pool = self._pool
        assert pool is not None, "start() runs in the app's lifespan"
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(
                pool, _validate_in_worker, kind, body
            )
        except BrokenProcessPool:
            # A worker died (killed, out of memory): every body it queued fails alike.
            if self._pool is pool:
                log.warning("a validation worker died; starting a new pool of workers")
                self._pool = self._new_pool()
                pool.shutdown(wait=False)
            raise ApiError(
                503,
                "The API's validation worker stopped unexpectedly; nothing was stored. "
                "Retry in a moment.",
                headers={"Retry-After": "1"},
            ) from None
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome

    def close(self) -> None:
        """Stop the workers, without waiting for them to exit: the server has already waited
        for the requests in progress, so none is validating (measured: waiting took 0.6-2.8 s
        of a stop on a busy machine, niced workers being the last to run)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
