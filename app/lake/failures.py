"""Telling an outage from an error, and saying so: a failed query is an outage when Kafka or S3
does not answer (a restart mends it once they are back), an error otherwise (it ends the job with
what happened and what to run)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql.streaming.query import StreamingQuery

from app.core.clients import s3_filesystem
from app.core.config import Settings
from app.lake.gaps import ACK_COMMAND, gaps_url

Log = Callable[[str], None]
PROBE_TIMEOUT_SECONDS = 3.0
PROBE_EVERY_SECONDS = 5.0
# How a failure caused by a service that does not answer reads (Java and Python clients).
UNREACHABLE_SIGNS = (
    "Connection refused",
    "ConnectException",
    "Connection reset",
    "TimeoutException",
    "Timed out waiting",
    "SocketTimeoutException",
    "NoRouteToHost",
    "UnknownHostException",
    "Unable to execute HTTP request",
    "AWSClientIOException",
    "SdkClientException",
    "EndpointConnectionError",
    "Could not connect to the endpoint",
    "Read timeout on endpoint",
    "Failed to get offsets",
    "Service Unavailable",
)


@dataclass(frozen=True)
class Failure:
    message: str  # the cause as Spark or the client reported it
    explanation: str  # what happened and what to run, for a failure a restart cannot mend
    outage: bool = False  # known to be caused by a service that does not answer


def explain_failure(query: StreamingQuery, message: str, settings: Settings) -> str:
    """A person-sized account of a failed query: the cause's first line and what to do."""
    first = next((line for line in message.splitlines() if line.strip()), message)[:400]
    if "NoSuchBucket" in message or "UnknownStoreException" in message:
        advice = (
            f"bucket {settings.s3_bucket} does not exist at {settings.s3_endpoint_url}: "
            "run `task infra-up`"
        )
    elif _missing_jar(message):
        advice = (
            "a connector jar is missing or does not match this pyspark: run "
            f"`python -m app.lake.jars` (delete {settings.lab_home / 'jars'} to resolve them again)"
        )
    elif _data_loss(message):
        advice = (
            "the checkpoint points at offsets Kafka no longer has. After retention or deleted "
            f"records, run `{ACK_COMMAND}` to go on from the oldest order Kafka holds and keep "
            f"the lake (it records which orders are lost in {gaps_url(settings)}). After a "
            "re-created topic, or to start over, run `task lake-reset` (it removes the "
            f"checkpoints in {settings.checkpoint_dir} and the lake folders they fed; the "
            "stream writes again what Kafka holds)"
        )
    else:
        advice = f"see the Spark log above; the checkpoint is in {settings.checkpoint_dir}"
    return f"query {query.name} failed: {first}\n-> {advice}"


def _missing_jar(message: str) -> bool:
    signs = ("ClassNotFound", "NoClassDefFound", "NoSuchMethod", "Failed to find data")
    return any(sign in message for sign in signs)


def _data_loss(message: str) -> bool:
    return "data loss" in message.lower() or "failOnDataLoss" in message


def _answers(server: str) -> bool:
    host, port = server.strip().rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_SECONDS).close()
    except OSError:
        return False
    return True


def unreachable(settings: Settings) -> list[str]:
    """The services the stream needs that do not answer now, e.g. `Kafka at 127.0.0.1:9092`."""
    away = []
    # One broker of a cluster is enough to answer: the others' partitions have moved to it.
    if not any(_answers(server) for server in settings.kafka_servers.split(",")):
        away.append(f"Kafka at {settings.kafka_servers}")
    try:
        s3_filesystem(settings, timeout=PROBE_TIMEOUT_SECONDS).ls(settings.s3_bucket)
    except Exception:
        away.append(f"S3 at {settings.s3_endpoint_url}")
    return away


def is_outage(message: str, settings: Settings) -> bool:
    """A failure is an outage when a service does not answer (now, or by the failure's own
    words), unless it is one of the errors a restart cannot mend."""
    if _missing_jar(message) or _data_loss(message) or "NoSuchBucket" in message:
        return False
    return bool(unreachable(settings)) or any(sign in message for sign in UNREACHABLE_SIGNS)


class OutageReport:
    """Says once when a service stops answering, once when that stops the queries, and once
    when every service answers again, however many probes and restarts happen in between."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.since: float | None = None
        self.stopped = False

    def away(self, services: list[str]) -> None:
        if self.since is not None:
            return
        self.since = time.monotonic()
        self.log(
            f"{' and '.join(services) or 'Kafka or S3'} does not answer: the stream waits for it "
            f"(checked every {PROBE_EVERY_SECONDS:.0f} s)"
        )

    def queries_stopped(self, services: list[str], cause: str) -> None:
        self.away(services)
        if not self.stopped:
            self.stopped = True
            first = (cause.strip().splitlines() or ["?"])[0][:200]
            self.log(
                f"the queries failed while it is away ({first}); they restart from their "
                "checkpoints once it answers again"
            )

    def back(self, what: str) -> None:
        if self.since is None:
            return
        self.log(f"Kafka and S3 answer again after {time.monotonic() - self.since:.0f} s: {what}")
        self.since, self.stopped = None, False
