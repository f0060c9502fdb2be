"""`task lake-ack-gap`: go on past orders Kafka no longer holds, keeping the lake.

When Kafka's retention (or a deletion of records) has moved a partition's log start past the
offset a checkpoint resumes from, those orders can never reach the lake. The stream refuses to
start then (`find_gaps`, and Spark's `failOnDataLoss` while it runs) rather than skip them
silently. Acknowledging the gap records exactly what is lost (which sink, topic and partitions,
offsets from-to, how many, when, by whom) in `gaps.json` beside the checkpoints, then moves each
checkpoint's resume offsets up to the log start of just those partitions. Every file already in
the lake stays, and so does every other partition's position: the next start reads on from the
oldest order Kafka holds. (`task lake-reset` is the heavier way out: it empties the lake too.)

How the checkpoint is moved: a batch N reads the offsets between `offsets/N-1` and `offsets/N`
(batch 0 starts at the source's initial offsets, `sources/0/0`). At rest (batch N committed)
the next batch starts at `offsets/N`; with batch N planned but not committed, Spark runs it again
from `offsets/N-1`. So the entries the next batch reads from (and, for a batch in flight, its end
as well) have each lost partition's offset raised to the log start. Offsets only go up, to where
Kafka's data now begins, so no order still in Kafka is skipped and none is read twice.

    python -m app.lake.gaps    # record the gap and move the checkpoints (no stream may run)
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]
from fsspec import AbstractFileSystem

from app.core.clients import kafka_admin
from app.core.config import Settings, get_settings
from app.core.errors import LabError
from app.core.logs import setup_logging
from app.core.topics import RETENTION_WARNING
from app.lake.queries import Sink, sinks
from app.lake.sink_log import log_state
from app.lake.storage import join_url, location
from app.lake.writer_lock import writer_lock

GAPS_NAME = "gaps.json"
ACK_COMMAND = "task lake-ack-gap"
KAFKA_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class PartitionGap:
    partition: int
    first: int  # the first offset lost: where the checkpoint resumes
    log_start: int  # the first offset Kafka holds now

    @property
    def lost(self) -> int:
        return self.log_start - self.first


@dataclass(frozen=True)
class SinkGap:
    """The offsets one query's checkpoint still has to read that Kafka no longer holds."""

    sink: str
    checkpoint: str
    topic: str
    entries: list[str]  # the checkpoint files whose offsets the next batch reads from
    partitions: list[PartitionGap]

    @property
    def lost(self) -> int:
        return sum(gap.lost for gap in self.partitions)

    def describe(self) -> str:
        ranges = ", ".join(
            f"partition {gap.partition}: offsets {gap.first}-{gap.log_start - 1}"
            for gap in self.partitions
        )
        return f"{self.sink}: {self.lost} offsets of {self.topic} ({ranges})"


def gaps_url(settings: Settings) -> str:
    return join_url(settings.checkpoint_dir, GAPS_NAME)


def _reader(settings: Settings) -> Consumer:
    """A consumer that only looks: offsets, times, a record at an offset."""
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_servers,
            "group.id": "lake-gaps",  # never joined, never committed
            "enable.auto.commit": False,
            "log_level": 2,  # critical only: failures come back as exceptions
        }
    )


def _log_starts(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's first offset Kafka still holds."""
    consumer = _reader(settings)
    try:
        metadata = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_SECONDS).topics[topic]
        return {
            partition: consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=KAFKA_TIMEOUT_SECONDS
            )[0]
            for partition in metadata.partitions
        }
    finally:
        consumer.close()


def _offset_lines(fs: AbstractFileSystem, path: str) -> list[bytes]:
    return bytes(fs.cat_file(path)).split(b"\n")


def _topic_offsets(line: bytes, topic: str) -> dict[str, int] | None:
    """The partition offsets of `topic` in one line of a checkpoint offsets file, if it holds
    them (`{"<topic>": {"<partition>": <offset>, ...}}`; `sources/0/0` starts with a 0 byte)."""
    try:
        value = json.loads(line.lstrip(b"\x00"))
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get(topic), dict):
        return {str(key): int(offset) for key, offset in value[topic].items()}
    return None


def _resume_entries(settings: Settings, sink: Sink) -> list[str]:
    """The checkpoint files (paths on its filesystem) the next batch reads its offsets from:
    first its start, then (for a batch in flight) its end; none for a new checkpoint."""
    state = log_state(settings, sink.url, sink.checkpoint)
    _, folder = location(settings, sink.checkpoint)
    if state.planned < 0:
        return []
    if state.done >= state.planned:
        return [f"{folder}/offsets/{state.planned}"]
    start = f"{folder}/offsets/{state.planned - 1}" if state.planned else f"{folder}/sources/0/0"
    return [start, f"{folder}/offsets/{state.planned}"]


def _resume_offsets(settings: Settings, sink: Sink, entries: list[str]) -> dict[str, int]:
    """The offsets of the purchases topic the next batch of `sink` reads from, by partition."""
    fs, _ = location(settings, sink.checkpoint)
    topic = settings.topic_purchased_item
    return next(
        (
            offsets
            for line in _offset_lines(fs, entries[0])
            if (offsets := _topic_offsets(line, topic))
        ),
        {},
    )


def find_gaps(settings: Settings) -> list[SinkGap]:
    """The gaps of each query's checkpoint: partitions where it resumes below Kafka's log
    start. Empty when every order the checkpoints still have to read is in Kafka."""
    topic = settings.topic_purchased_item
    log_starts: dict[int, int] | None = None
    found = []
    for sink in sinks(settings):
        entries = _resume_entries(settings, sink)
        if not entries:
            continue
        resume = _resume_offsets(settings, sink, entries)
        if log_starts is None:
            log_starts = _log_starts(settings, topic)
        partitions = [
            PartitionGap(int(partition), offset, log_starts[int(partition)])
            for partition, offset in sorted(resume.items(), key=lambda item: int(item[0]))
            if int(partition) in log_starts and offset < log_starts[int(partition)]
        ]
        if partitions:
            found.append(SinkGap(sink.name, sink.checkpoint, topic, entries, partitions))
    return found


START_COMMAND = "task up"


@dataclass(frozen=True)
class UnreadAtRisk:
    """Records of one partition the stream has not read yet that Kafka deletes soon: `at_risk`
    of them older than `RETENTION_WARNING` of `retention.ms`, or `unread_bytes` (estimated) near
    `retention.bytes`; the oldest, at the stream's position, is `age_ms` old."""

    topic: str
    partition: int
    sinks: tuple[str, ...]
    at_risk: int
    age_ms: int
    retention_ms: int | None
    unread_bytes: int
    retention_bytes: int | None

    def describe(self) -> str:
        limits = []
        if self.at_risk and self.retention_ms is not None:
            limits.append(
                f"{self.at_risk:,} unread records are older than {RETENTION_WARNING:.0%} of the "
                f"topic's retention.ms ({_hours(self.retention_ms)})"
            )
        if self.retention_bytes is not None and self.unread_bytes >= (
            RETENTION_WARNING * self.retention_bytes
        ):
            limits.append(
                f"about {_size(self.unread_bytes)} unread, over {RETENTION_WARNING:.0%} of its "
                f"retention.bytes ({_size(self.retention_bytes)} a partition)"
            )
        return (
            f"{self.topic}[{self.partition}]: the oldest record the stream has not read "
            f"({', '.join(self.sinks)}) is {_hours(self.age_ms)} old; {' and '.join(limits)}. "
            f"Kafka deletes them soon, and the stream would then stop at a gap (`{ACK_COMMAND}`): "
            f"start the stream now (`{START_COMMAND}`)"
        )


def _hours(ms: int) -> str:
    return f"{ms / 3_600_000:.1f} h"


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def _retention(settings: Settings, topic: str) -> tuple[int | None, int | None]:
    """The topic's retention.ms and retention.bytes (a partition's), None where unlimited."""
    admin = kafka_admin(settings)  # referenced until the future is done
    resource = ConfigResource(ResourceType.TOPIC, topic)
    futures = admin.describe_configs([resource], request_timeout=KAFKA_TIMEOUT_SECONDS)
    config = futures[resource].result()
    ms, size = (int(config[name].value) for name in ("retention.ms", "retention.bytes"))
    return (ms if ms >= 0 else None, size if size >= 0 else None)


def _first_unread(consumer: Consumer, topic: str, partition: int, offset: int) -> list[Any]:
    """The records at `offset` and after it (one fetch's worth), for their time and size."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    message = consumer.poll(KAFKA_TIMEOUT_SECONDS)
    if message is None or message.error():
        return []
    return [message, *consumer.consume(499, timeout=0)]


def _unread(settings: Settings, marks: dict[int, tuple[int, int]]) -> dict[int, dict[str, int]]:
    """Partition -> query -> the first offset the query has not read, where it has not read
    every record Kafka holds (`marks`: each partition's log start and end). A query with no
    checkpoint starts at the log start; offsets already deleted are `find_gaps`' business."""
    unread: dict[int, dict[str, int]] = {}
    for sink in sinks(settings):
        entries = _resume_entries(settings, sink)
        resume = _resume_offsets(settings, sink, entries) if entries else {}
        for p, (start, end) in marks.items():
            position = max(resume.get(str(p), start), start)
            if position < end:
                unread.setdefault(p, {})[sink.name] = position
    return unread


def unread_at_risk(settings: Settings) -> list[UnreadAtRisk]:
    """The partitions whose records the stream has not read yet Kafka's retention is about to
    delete: older than `RETENTION_WARNING` of retention.ms, or (estimated) as many bytes."""
    topic = settings.topic_purchased_item
    retention_ms, retention_bytes = _retention(settings, topic)
    if retention_ms is None and retention_bytes is None:
        return []
    consumer = _reader(settings)
    try:
        metadata = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_SECONDS).topics[topic]
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), KAFKA_TIMEOUT_SECONDS)
            for p in sorted(metadata.partitions)
        }
        unread = _unread(settings, marks)
        young: dict[int, int] = {}
        if retention_ms is not None and unread:
            cutoff = int(time.time() * 1000 - RETENTION_WARNING * retention_ms)
            stamped = [TopicPartition(topic, p, cutoff) for p in unread]
            # The first offset at or after the cutoff: every record before it is older (-1: all).
            young = {
                tp.partition: tp.offset
                for tp in consumer.offsets_for_times(stamped, KAFKA_TIMEOUT_SECONDS)
            }
        found = []
        for p, positions in sorted(unread.items()):
            position, end = min(positions.values()), marks[p][1]
            first_young = young.get(p, position)
            at_risk = max((end if first_young < 0 else first_young) - position, 0)
            if not at_risk and retention_bytes is None:
                continue
            records = _first_unread(consumer, topic, p, position)
            if not records:
                continue
            # Size retention counts bytes: estimated from the first unread records' sizes.
            size = sum(len(r.value() or b"") + len(r.key() or b"") for r in records)
            unread_bytes = size * (end - position) // len(records)
            if at_risk or (
                retention_bytes is not None and unread_bytes >= RETENTION_WARNING * retention_bytes
            ):
                found.append(
                    UnreadAtRisk(
                        topic,
                        p,
                        tuple(name for name, at in positions.items() if at == position),
                        at_risk,
                        int(time.time() * 1000) - records[0].timestamp()[1],
                        retention_ms,
                        unread_bytes,
                        retention_bytes,
                    )
                )
        return found
    finally:
        consumer.close()


def retention_warnings(settings: Settings) -> list[str]:
    """A line per partition whose records the stream has not read yet and Kafka's retention
    deletes soon (`unread_at_risk`): for `task status`, the console's lake hop and the stream's
    log."""
    return [risk.describe() for risk in unread_at_risk(settings)]


def refusal(settings: Settings, gaps: list[SinkGap]) -> str:
    """What the stream says when it cannot resume because of `gaps`: what is lost, what to run."""
    lost = "; ".join(gap.describe() for gap in gaps)
    return (
        f"Kafka no longer holds orders the stream has not written yet (retention, or deleted "
        f"records): {lost}. Nothing was written. To go on from the oldest order Kafka holds and "
        f"keep the lake, run `{ACK_COMMAND}` (it records the gap in {gaps_url(settings)}). The "
        "heavier way out, `task lake-reset`, also empties the lake and writes again what Kafka "
        "holds."
    )


def recorded_gaps(settings: Settings) -> list[dict[str, Any]]:
    """The gaps acknowledged so far, oldest first (`gaps.json`)."""
    fs, path = location(settings, gaps_url(settings))
    try:
        recorded: list[dict[str, Any]] = json.loads(fs.cat_file(path))["gaps"]
    except FileNotFoundError:
        return []
    return recorded


def _record(settings: Settings, gaps: list[SinkGap]) -> None:
    fs, path = location(settings, gaps_url(settings))
    at = datetime.now(UTC).isoformat(timespec="seconds")
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    recorded = recorded_gaps(settings)
    for gap in gaps:
        entry = {
            "acknowledged_at": at,
            "by": by,
            "sink": gap.sink,
            "checkpoint": gap.checkpoint,
            "topic": gap.topic,
            "lost": gap.lost,
            "partitions": [
                {
                    "partition": part.partition,
                    "first_lost": part.first,
                    "last_lost": part.log_start - 1,
                    "lost": part.lost,
                }
                for part in gap.partitions
            ],
        }
        # An acknowledgement cut short after recording finds the same gap again: once is enough.
        if not any(_same_gap(old, entry) for old in recorded):
            recorded.append(entry)
    fs.mkdirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, (json.dumps({"gaps": recorded}, indent=2) + "\n").encode())


def _same_gap(old: dict[str, Any], new: dict[str, Any]) -> bool:
    keys = ("sink", "checkpoint", "topic", "partitions")
    return all(old.get(key) == new[key] for key in keys)


def _raise_offsets(settings: Settings, gap: SinkGap) -> None:
    """Raise each lost partition's offset in the gap's checkpoint entries to its log start."""
    fs, _ = location(settings, gap.checkpoint)
    log_starts = {str(part.partition): part.log_start for part in gap.partitions}
    for path in gap.entries:
        lines = _offset_lines(fs, path)
        for number, line in enumerate(lines):
            offsets = _topic_offsets(line, gap.topic)
            if offsets is None:
                continue
            raised = {
                key: max(offset, log_starts.get(key, offset)) for key, offset in offsets.items()
            }
            prefix = line[: len(line) - len(line.lstrip(b"\x00"))]
            lines[number] = prefix + json.dumps({gap.topic: raised}, separators=(",", ":")).encode()
        fs.pipe_file(path, b"\n".join(lines))
        # On local disk Hadoop keeps a checksum beside each file; a stale one fails the read,
        # a missing one is not checked.
        folder, name = path.rsplit("/", 1)
        if fs.exists(f"{folder}/.{name}.crc"):
            fs.rm(f"{folder}/.{name}.crc")


def acknowledge(settings: Settings) -> list[SinkGap]:
    """Record the checkpoints' gaps and move them past them, holding the writer lock (LabError
    naming the holder while a stream runs). Returns what was acknowledged."""
    lock = writer_lock(settings)
    lock.acquire()
    try:
        gaps = find_gaps(settings)
        if gaps:
            _record(settings, gaps)  # first: a gap is never skipped without its record
            for gap in gaps:
                _raise_offsets(settings, gap)
        return gaps
    finally:
        lock.release()


def report(settings: Settings) -> list[str]:
    """`task status` lines: acknowledged gaps (orders that never reached the lake) and a gap
    that stops the stream now."""
    lines = []
    for entry in recorded_gaps(settings):
        ranges = ", ".join(
            f"{part['partition']}: {part['first_lost']}-{part['last_lost']}"
            for part in entry["partitions"]
        )
        lines.append(
            f"lake gap {entry['sink']}: {entry['lost']} offsets of {entry['topic']} never "
            f"reached the lake (partition {ranges}), acknowledged {entry['acknowledged_at']} "
            f"by {entry['by']}"
        )
    pending = find_gaps(settings)
    if pending:
        lost = "; ".join(gap.describe() for gap in pending)
        lines.append(
            f"lake gap NOT ACKNOWLEDGED, the stream cannot resume: {lost}. Run `{ACK_COMMAND}`."
        )
    return lines or ["lake gaps: none"]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        description="Record the orders Kafka no longer holds that the stream's checkpoints "
        "still have to read (in gaps.json beside them), and resume past them keeping the lake."
    ).parse_args(argv)
    settings = get_settings()
    setup_logging("lake-ack-gap", settings)
    try:
        gaps = acknowledge(settings)
    except LabError as exc:
        print(f"lake-ack-gap: nothing changed. {exc}", file=sys.stderr)
        return 1
    if not gaps:
        print(
            "lake-ack-gap: no gap: no checkpoint resumes below Kafka's log start. (If the topic "
            "was re-created, its offsets start again from 0: run `task lake-reset`.)"
        )
        return 0
    print(f"lake-ack-gap: recorded in {gaps_url(settings)}:")
    for gap in gaps:
        print(f"  {gap.describe()}")
    print("The stream now resumes from the oldest order Kafka holds; the lake keeps its files.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
