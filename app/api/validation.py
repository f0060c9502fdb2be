"""Validating request bodies without stalling the event loop.

pydantic holds the GIL while it validates, so a thread would not free the event loop: a 2 MiB
object of unknown keys takes about a second to refuse (one error per key), and a valid batch of
1,000 orders about 20 ms to validate and serialise. Bodies up to `INLINE_BYTES` (at worst a few
ms) are validated on the event loop; larger ones in a small pool of worker processes
(`API_VALIDATION_WORKERS` at once, the others queue), scheduled apart from the API (see
`_start_worker`) so that the event loop keeps its CPU while a worker chews on a large body.
"""

from __future__ import annotations

import asyncio
import logging
import os
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
        self._pool: ProcessPoolExecutor | None = None

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
