"""The API's Kafka producer: librdkafka (confluent-kafka) behind an awaitable `send`.

`send` enqueues a request's records and waits for every delivery report, so the API answers 2xx
only once the broker has stored all of them (acks=all). librdkafka does the network I/O on its
own threads. Its delivery reports are served on the event loop by a background task calling the
non-blocking `poll(0)` every millisecond while records are in flight (and rarely when idle), so
the event loop never blocks on Kafka and no second Python thread competes for the GIL.

Failures surface as `KafkaUnavailable` with a sentence for the client: broker unreachable or slow
(no report within `api_produce_timeout_seconds`), send queue full, topic missing. After such a
503 some records of the request may still have been stored; clients retry, so delivery is
at-least-once and `OrderId` identifies a repeated order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from app.core.config import Settings

log = logging.getLogger(__name__)

# Delivery reports are picked up this often while records are in flight: at most a millisecond
# added to a request, for a few microseconds of CPU per poll.
BUSY_POLL_SECONDS = 0.001
# When idle, poll anyway now and then, so librdkafka's error events are logged and not hoarded.
IDLE_POLL_SECONDS = 1.0


class KafkaUnavailable(Exception):
    """The records of a request were not all acknowledged; the message says why, for a person."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # short label for the produce-failure metric


@dataclass(eq=False, slots=True)
class _Pending:
    """One request's records awaiting their delivery reports."""

    owner: RecordProducer
    future: asyncio.Future[KafkaError | None]
    remaining: int
    error: KafkaError | None = field(default=None)

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        # Called by poll() or flush(), i.e. on the event loop except at shutdown (see close).
        self.owner.in_flight -= 1
        if err is not None and self.error is None:
            self.error = err
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():  # a timed-out request stopped waiting
            self.future.set_result(self.error)


def producer_config(settings: Settings) -> dict[str, object]:
    """librdkafka settings of the API's producer (also used by the benchmark's baseline)."""
    return {
        "bootstrap.servers": settings.kafka_servers,
        "client.id": "ingest-api",
        "acks": "all",
        "enable.idempotence": True,
        # A few ms of batching costs little latency and saves most per-request round trips.
        "linger.ms": 5,
        "compression.type": "lz4",
        # Give up on a record when the request would give up on it, not minutes later.
        "message.timeout.ms": int(settings.api_produce_timeout_seconds * 1000),
        # Same key -> same partition as Java and kafka-python clients (their default is murmur2).
        "partitioner": "murmur2_random",
        # Notice a broker that came back within a second (default backs off up to 10 s).
        "reconnect.backoff.max.ms": 1000,
        # Errors reach `error_cb`, which logs an outage once instead of at every retry.
        "log_level": 2,
    }


class RecordProducer:
    """Sends keyed records to Kafka and awaits their acknowledgement (one event loop's worth)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout = settings.api_produce_timeout_seconds
        self.in_flight = 0  # records produced whose delivery report has not been served
        self._fatal: KafkaError | None = None
        self._outage_reported = False
        # librdkafka connects in the background; nothing here waits for Kafka.
        self._producer = self._new_producer()
        self._work = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    def _new_producer(self) -> Producer:
        return Producer({**producer_config(self.settings), "error_cb": self._on_error})

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("Kafka producer fatal error, replacing the producer: %s", err.str())
            self._fatal = err
        elif err.code() == KafkaError._ALL_BROKERS_DOWN and not self._outage_reported:
            # Once per outage (librdkafka repeats it at every reconnect attempt).
            self._outage_reported = True
            log.warning(
                "Kafka at %s is not reachable: requests get 503 until it is back "
                "(`task infra-status` shows it).",
                self.settings.kafka_servers,
            )
        elif err.code() != KafkaError._ALL_BROKERS_DOWN:
            # Per-attempt connection errors while Kafka is down or restarting: noise at INFO.
            log.info("Kafka: %s", err.str())

    def start(self) -> None:
        """Serve delivery reports on the running loop (the app's). Kafka may be down."""
        self._poller = asyncio.get_running_loop().create_task(self._serve_reports())

    async def _serve_reports(self) -> None:
        while True:
            self._producer.poll(0)
            if self._fatal is not None:
                self._replace_producer()
            if self.in_flight:
                await asyncio.sleep(BUSY_POLL_SECONDS)
            else:
                self._work.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL_SECONDS):
                        await self._work.wait()

    def _replace_producer(self) -> None:
        """After a fatal error (librdkafka's verdict on some idempotence failures, e.g. a gap in
        sequence numbers) a producer refuses everything: swap in a new one instead."""
        old = self._producer
        self._producer = self._new_producer()
        self._fatal = None
        old.purge()
        old.flush(0)  # serves the purged records' reports: their requests fail now, not later

    async def send(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        headers: Sequence[tuple[str, str | bytes | None]] = (),
    ) -> None:
        """Store `(key, value)` records in `topic`, each with `headers` (Kafka message headers);
        return once the broker acknowledged all.

        Raises KafkaUnavailable when any record failed or no report came within the timeout.
        """
        pending = _Pending(self, asyncio.get_running_loop().create_future(), len(records))
        message_headers = list(headers) or None
        try:
            for key, value in records:
                self._producer.produce(
                    topic, value, key, on_delivery=pending, headers=message_headers
                )
                self.in_flight += 1
        except BufferError:
            # Records already queued may still be stored; the client's retry is at-least-once.
            raise KafkaUnavailable(
                "The API's Kafka send queue is full: Kafka is slow or down. Retry in a moment.",
                "queue_full",
            ) from None
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"Kafka refused the records: {exc.args[0].str()}. Retry in a moment.",
                "refused",
            ) from None
        finally:
            self._work.set()
        try:
            async with asyncio.timeout(self.timeout):
                error = await pending.future
        except TimeoutError:
            raise KafkaUnavailable(self._timeout_message(), "timeout") from None
        if error is not None:
            raise self._failure(topic, error)
        self._outage_reported = False

    def _timeout_message(self) -> str:
        return (
            f"Kafka at {self.settings.kafka_servers} did not acknowledge the records "
            f"within {self.timeout:g} s (broker down or overloaded; `task infra-status` shows it). "
            "They may or may not be stored: retry in a moment."
        )

    def _failure(self, topic: str, error: KafkaError) -> KafkaUnavailable:
        code = error.code()
        if code == KafkaError._MSG_TIMED_OUT:
            return KafkaUnavailable(self._timeout_message(), "timeout")
        if code in (KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART):
            return KafkaUnavailable(
                f"Kafka topic {topic} does not exist: run `task infra-up`, which creates it.",
                "unknown_topic",
            )
        return KafkaUnavailable(
            f"Kafka did not store the records: {error.str()}. Retry in a moment.", error.name()
        )

    async def missing_topics(self, topics: Sequence[str]) -> list[str]:
        """The topics of `topics` the broker does not have; raises KafkaUnavailable if no answer.

        Asks the broker for metadata on a worker thread, bounded by `api_health_timeout_seconds`.
        """
        timeout = self.settings.api_health_timeout_seconds
        try:
            metadata = await asyncio.to_thread(self._producer.list_topics, timeout=timeout)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"Kafka at {self.settings.kafka_servers} is not reachable "
                f"({exc.args[0].str()}): run `task infra-up`.",
                "unreachable",
            ) from None
        return [name for name in topics if name not in metadata.topics]

    async def close(self) -> None:
        """Stop polling and wait (bounded) for records still queued, off the event loop."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        # No request waits any more (the server drained them), so the reports served by flush
        # on the worker thread only count down; their futures are already done.
        left: int = await asyncio.to_thread(self._producer.flush, self.timeout)
        if left:
            log.warning("%d records were still unacknowledged when the API stopped", left)
