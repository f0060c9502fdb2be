"""Task 1 of the DAG: move every `UserEvents` message waiting in Kafka into MongoDB, exactly once.

An event's identity is a fingerprint of its canonical content (`event_id`), not where Kafka put
it: a client that retries after a timeout may deliver the same event twice, at two offsets, and it
must be stored and counted once. A client that sent an `Idempotency-Key` named the event itself:
the key is its identity, so two real, identical events with two keys are both stored and counted,
and a key sent twice is stored once, as first stored (later bodies under that key are duplicates).
The Kafka coordinates stay on the document as lineage.

Exactly once, whatever crashes, retries or resets happen, comes from the order of three writes
per batch:

1. each valid event is inserted with its fingerprint as `_id`, so an event read or delivered
   twice is stored once; invalid messages go to the quarantine collection, keyed by their Kafka
   coordinates (including the topic's id);
2. a *pending batch* document per partition records, for each (UserId, EventName) pair, the
   offsets of the events to count: the ones stored now and the ones this very message stored
   before (a batch read again after a crash). An event whose fingerprint another message stored
   is a duplicate delivery and is left out. Task 2 (`app.pipeline.counts`) counts from these;
3. only then are the batch's offsets committed (auto-commit is off).

A crash before 3 makes the next run read the batch again: 1 and 2 are repeated harmlessly.
The end offsets taken at start bound the run, so it ends even while the generator keeps
producing; `drain_max_records` and `drain_max_seconds` let a large backlog drain over several runs.

A drain reads the partitions it is given (all by default) by explicit assignment, not by joining
the group: several drains can split a topic's partitions between them (`partition_groups`, the
DAG's mapped drain tasks) with no rebalance to interrupt a batch between its store and its
commit. They share the group id only to keep the committed offsets, which `task status` reports
as the group's lag. Two drains given the same partition (a manual run beside the scheduled one)
store and count each event once all the same, as a crash's re-read does.

When Kafka lost its data, offsets start again lower. A topic deleted and re-created has a new
topic id; a partition whose data alone was lost (its folder wiped, a truncated replica made
leader) keeps the topic id, and its offsets go back: below the group's committed offset or below
the highest end offset a drain recorded (`drain_state`). Either way the drain says so in the
log, reports it in the summary and reads the partition from its start. The counting marks are
kept per topic id and, for a partition that went back, per *epoch* of it (raised each time, kept
in `drain_state`, carried on each stored document), so new events are counted although their
offsets were seen before, and an old event read again in the new epoch is a duplicate, not
counted twice. The topic id is asked of Kafka around the offsets the run starts from and again
after every poll: records of a topic re-created during the run are never stored as the old one's.

Offsets Kafka deleted (retention) before the drain read them are reported, never skipped in
silence: a committed offset below the partition's log start is a gap of that many offsets,
logged as a warning, recorded in `drain_state` (for `task status` and the console) and listed
in the summary (`gaps`, `lost_offsets`); so are old offsets lost with a partition's data.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from pymongo.errors import PyMongoError

from app.core.clients import mongo_client
from app.core.config import Settings
from app.core.errors import LabError
from app.core.topics import TopicIds, lost_offsets_line, topic_partitions
from app.pipeline.documents import Batch, in_epochs, pending_batches, prepare_batch, same_delivery
from app.pipeline.store import EventStore, PartitionState

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500


class DrainError(LabError):
    """The drain stopped; the message says what happened and what to do."""


@dataclass
class Gap:
    """Offsets `first` to `end` (excluded) of a partition that Kafka no longer held when the
    drain came to read them: deleted by retention, or lost with the partition's data."""

    partition: int
    first: int
    end: int
    lost: int
    reason: str  # "retention" or "data lost"


@dataclass
class DrainSummary:
    """What one drain did; small enough for an Airflow XCom."""

    consumed: int = 0
    stored: int = 0
    # Messages whose event this same message had stored: re-read after a crash before the commit.
    already_stored: int = 0
    # Events another message had stored already: a client's retry delivered them twice.
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0
    # Partitions read again from their start because Kafka lost its data or the topic changed.
    resets: int = 0
    # Of those, partitions whose offsets went back under the same topic id: a new epoch.
    went_back: int = 0
    # Offsets never read because Kafka no longer held them, and where they were.
    lost_offsets: int = 0
    gaps: list[Gap] = field(default_factory=list)
    # Messages below the end offsets taken at start that a cap left for the next run.
    left: int = 0
    stopped: str = "caught up"
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Stored:
    """What storing one batch found: events new to the store, events this same message had
    stored before (read again after a crash), and events other messages had stored (duplicates)."""

    new: int = 0
    read_again: int = 0
    duplicates: int = 0


def store_batch(store: EventStore, batch: Batch, batch_token: str) -> Stored:
    """Write a batch in the order that makes a crash harmless (see the module's docstring)."""
    existed = store.insert_new(store.events, batch.events)
    stored = store.find_by_ids(
        store.events, (batch.events[i]["_id"] for i in existed), fields=("Kafka",)
    )
    result = Stored(new=len(batch.events) - len(existed))
    to_count = []
    for index, document in enumerate(batch.events):
        if index not in existed:
            to_count.append(document)
        elif same_delivery(stored[document["_id"]], document):
            result.read_again += 1
            to_count.append(document)
        else:
            result.duplicates += 1
    store.insert_new(store.quarantine, batch.quarantine)
    store.insert_new(store.pending, pending_batches(to_count, batch.first_offsets, batch_token))
    return result


def open_consumer(settings: Settings) -> KafkaConsumer:
    """A consumer that keeps its offsets under the drain's group and commits only when told to."""
    try:
        return KafkaConsumer(
            bootstrap_servers=settings.kafka_servers.split(","),
            group_id=settings.drain_group_id,
            client_id=f"{settings.drain_group_id}-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            # A new group starts with everything the topic holds: that is what is waiting.
            auto_offset_reset="earliest",
            max_poll_records=settings.drain_batch_size,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            bootstrap_timeout_ms=10_000,
        )
    except KafkaError as error:
        raise DrainError(
            f"Kafka is not reachable at {settings.kafka_servers}, so nothing was "
            "drained. Start the services with `task infra-up` (or check KAFKA_BOOTSTRAP_SERVERS)."
        ) from error


def partition_groups(settings: Settings) -> list[list[int]]:
    """The topic's partitions dealt round-robin into at most `drain_parallelism` groups: one
    drain each, e.g. one mapped DAG task each."""
    try:
        partitions = sorted(topic_partitions(settings, settings.topic_user_events))
    except Exception as error:
        raise DrainError(
            f"Topic {settings.topic_user_events} does not exist or Kafka does not describe it at "
            f"{settings.kafka_servers} ({error}). `task infra-up` starts Kafka and "
            "creates the lab's topics."
        ) from error
    groups = min(settings.drain_parallelism, len(partitions))
    return [partitions[start::groups] for start in range(groups)]


def drain_user_events(settings: Settings, partitions: Sequence[int] | None = None) -> DrainSummary:
    """Store every `UserEvents` message waiting in `partitions` (default: all) when the call
    starts.

    Commits the group's offsets after each stored batch. Raises DrainError, naming what to do,
    when Kafka or MongoDB fails; what was committed before stays stored, the rest is read again
    by the next run.
    """
    client = mongo_client(settings)
    try:
        consumer = open_consumer(settings)
        try:
            return _drain(consumer, EventStore.connect(settings, client), settings, partitions)
        finally:
            consumer.close(autocommit=False)
    finally:
        client.close()


def _store(store: EventStore, batch: Batch, settings: Settings) -> Stored:
    try:
        return store_batch(store, batch, uuid.uuid4().hex)
    except PyMongoError as error:
        raise DrainError(
            f"MongoDB at {settings.mongo_url} failed while storing a batch of "
            f"{len(batch.events) + len(batch.quarantine)} messages ({type(error).__name__}: "
            f"{error}). Their offsets were not committed, so nothing is lost: the next run reads "
            "them again. Check MongoDB with `task infra-status`; `task infra-up` starts it."
        ) from error


BATCH_COMMIT = (
    "The batch is stored in MongoDB but committing its Kafka offsets failed ({error}). Nothing "
    "is lost or duplicated: the next run reads it again and recognises what is already stored."
)
RESET_COMMIT = (
    "Committing the start offsets of the reset partitions failed ({error}); nothing was read "
    "yet. The next run tries again."
)


def _commit(
    consumer: KafkaConsumer, offsets: Mapping[TopicPartition, int], failed: str = BATCH_COMMIT
) -> None:
    """Commit `offsets`; on failure raise DrainError with `failed` (its `{error}` filled in)."""
    try:
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})
    except KafkaError as error:
        raise DrainError(
            failed.format(error=f"{type(error).__name__}: {error}")
            + " If this repeats, check Kafka with `task infra-status`."
        ) from error


def _topic_id(ids: TopicIds, settings: Settings) -> str:
    topic = settings.topic_user_events
    try:
        return ids.of(topic)
    except Exception as error:
        raise DrainError(
            f"Topic {topic} does not exist or Kafka does not describe it at "
            f"{settings.kafka_servers} ({error}). `task infra-up` starts Kafka and "
            "creates the lab's topics."
        ) from error


@dataclass
class Start:
    """Where a run starts: the topic's id, each partition's epoch and recorded state, the end
    offsets that bound the run, and the offsets to read partitions from again (committed
    before anything is read)."""

    topic_id: str
    states: dict[int, PartitionState]
    ends: dict[TopicPartition, int]
    restart: dict[TopicPartition, int] = field(default_factory=dict)


def _read_offsets(
    consumer: KafkaConsumer, assigned: list[TopicPartition], ids: TopicIds, settings: Settings
) -> tuple[str, dict[TopicPartition, int], dict[TopicPartition, int], dict[TopicPartition, Any]]:
    """(topic id, log starts, ends, committed offsets), all of one incarnation of the topic: the
    id is asked before and after the offsets, and they are read again if it changed."""
    for _ in range(3):
        topic_id = _topic_id(ids, settings)
        starts: dict[TopicPartition, int] = consumer.beginning_offsets(assigned)
        ends: dict[TopicPartition, int] = consumer.end_offsets(assigned)
        committed = {tp: consumer.committed(tp) for tp in assigned}
        if _topic_id(ids, settings) == topic_id:
            return topic_id, starts, ends, committed
    raise DrainError(
        f"Topic {settings.topic_user_events} was re-created three times while the drain read "
        "its offsets; nothing was read. Run the drain again once nobody re-creates the topic."
    )


def _plan_start(
    consumer: KafkaConsumer,
    store: EventStore,
    ids: TopicIds,
    settings: Settings,
    assigned: list[TopicPartition],
    summary: DrainSummary,
) -> Start:
    """Each partition's end offset now (where this run stops) and where to read it from: a
    partition of a re-created topic, or whose offsets went back (its data was lost: a new epoch),
    from its start; one whose committed offset Kafka deleted (retention), from its start, the gap
    reported."""
    topic = settings.topic_user_events
    topic_id, starts, ends, committed = _read_offsets(consumer, assigned, ids, settings)
    known = store.partition_states(topic, [tp.partition for tp in assigned])
    plan = Start(topic_id, {}, ends)
    recreated: dict[int, str] = {}
    for tp in assigned:
        state, start, end, mark = known[tp.partition], starts[tp], ends[tp], committed[tp]
        if state.topic_id is not None and state.topic_id != topic_id:
            recreated[tp.partition] = state.topic_id
            plan.states[tp.partition] = PartitionState(topic_id, 0, end)
            plan.restart[tp] = start
        elif (mark is not None and mark > end) or state.high_water > end:
            plan.states[tp.partition] = PartitionState(topic_id, state.epoch + 1, end)
            plan.restart[tp] = start
            summary.went_back += 1
            log.warning(
                "%s[%d]: the partition's offsets went back under the same topic id (it ends at "
                "%d; the group committed %s, a drain saw it end at %d): Kafka lost its data. "
                "Reading it from its start in a new epoch (%d): new events are counted, events "
                "already stored are recognised.",
                topic,
                tp.partition,
                end,
                mark,
                state.high_water,
                state.epoch + 1,
            )
            if mark is not None and mark < state.high_water:
                _gap(summary, topic, Gap(tp.partition, mark, state.high_water, 0, "data lost"))
        else:
            plan.states[tp.partition] = PartitionState(
                topic_id, state.epoch, max(state.high_water, end)
            )
            if mark is not None and mark < start:
                plan.restart[tp] = start
                _gap(summary, topic, Gap(tp.partition, mark, start, 0, "retention"))
    if recreated:
        log.warning(
            "Topic %s was re-created or Kafka lost its data (topic id %s, was %s): its offsets "
            "start again. Reading partitions %s from their start; the events stored from the "
            "old topic stay, and each new event is stored and counted once.",
            topic,
            topic_id,
            ", ".join(sorted(set(recreated.values()))),
            sorted(recreated),
        )
    summary.resets = len(recreated) + summary.went_back
    return plan


def _gap(summary: DrainSummary, topic: str, gap: Gap) -> None:
    gap.lost = gap.end - gap.first
    summary.gaps.append(gap)
    summary.lost_offsets += gap.lost
    log.warning(
        "%s: offsets %d to %d. The drain reads on from offset %d.",
        lost_offsets_line(topic, gap.partition, gap.lost, gap.reason),
        gap.first,
        gap.end - 1,
        gap.end,
    )


def _start(
    consumer: KafkaConsumer,
    store: EventStore,
    ids: TopicIds,
    settings: Settings,
    assigned: list[TopicPartition],
    summary: DrainSummary,
) -> Start:
    """Plan where the run starts, then make it so, in the order that survives a crash: the gaps
    recorded (found again, the same, if what follows fails), the restart offsets committed
    before anything is read (so no old offset outlives this run, even if it stores nothing of a
    partition), then the partitions' new states (a crash before them finds the partition gone
    back again, and starts another epoch: harmless)."""
    plan = _plan_start(consumer, store, ids, settings, assigned, summary)
    topic = settings.topic_user_events
    for tp, offset in plan.restart.items():
        consumer.seek(tp, offset)
    try:
        store.record_gaps(
            topic,
            [
                {
                    "Partition": gap.partition,
                    "TopicId": plan.topic_id,
                    "Epoch": plan.states[gap.partition].epoch,
                    "First": gap.first,
                    "End": gap.end,
                    "Lost": gap.lost,
                    "Reason": gap.reason,
                }
                for gap in summary.gaps
            ],
        )
        if plan.restart:
            _commit(consumer, plan.restart, RESET_COMMIT)
        store.remember_partitions(topic, plan.states)
    except PyMongoError as error:
        raise DrainError(
            f"MongoDB at {settings.mongo_url} failed while recording the drain's state "
            f"({error}); nothing was read. Check MongoDB with `task infra-status`; the next run "
            "tries again."
        ) from error
    return plan


def _check_topic(ids: TopicIds, settings: Settings, topic_id: str) -> None:
    """Raise DrainError if the topic is no longer the one the run started on. Asked after a poll:
    its records were fetched before, so while the id is unchanged they are the topic's."""
    now = _topic_id(ids, settings)
    if now != topic_id:
        raise DrainError(
            f"Topic {settings.topic_user_events} was re-created during the drain (topic id "
            f"{now}, was {topic_id}). The batch read after that was not stored; what was "
            "stored before belongs to the old topic. Run the drain again: it reads the new "
            "topic from its start."
        )


def _finish(
    consumer: KafkaConsumer, batch: Batch, storing: Future[Stored], summary: DrainSummary
) -> None:
    """Wait for a batch's store, commit its offsets, and add it to the summary."""
    stored = storing.result()
    _commit(consumer, batch.commit)
    summary.stored += stored.new
    summary.already_stored += stored.read_again
    summary.duplicates += stored.duplicates
    summary.quarantined += len(batch.quarantine)
    summary.batches += 1
    log.info(
        "batch %d: %d messages, %d new events, %d read again, %d duplicate deliveries, "
        "%d quarantined; committed %s",
        summary.batches,
        len(batch.events) + len(batch.quarantine),
        stored.new,
        stored.read_again,
        stored.duplicates,
        len(batch.quarantine),
        {tp.partition: offset for tp, offset in sorted(batch.commit.items())},
    )


def _drain(
    consumer: KafkaConsumer,
    store: EventStore,
    settings: Settings,
    partitions: Sequence[int] | None,
) -> DrainSummary:
    topic = settings.topic_user_events
    available = consumer.partitions_for_topic(topic)
    if not available:
        raise DrainError(
            f"Topic {topic} does not exist on {settings.kafka_servers}. "
            "`task infra-up` creates the lab's topics."
        )
    wanted = sorted(available if partitions is None else set(partitions))
    if missing := sorted(set(wanted) - available):
        raise DrainError(
            f"Topic {topic} has no partition {missing} (it has {sorted(available)}); the "
            "partition groups are taken again by the next run."
        )
    summary = DrainSummary()
    assigned = [TopicPartition(topic, partition) for partition in wanted]
    consumer.assign(assigned)
    started = time.monotonic()
    ids = TopicIds(settings)
    start = _start(consumer, store, ids, settings, assigned, summary)
    topic_id, epochs = start.topic_id, {p: state.epoch for p, state in start.states.items()}
    # End offset of each partition at start: the run stops there.
    marks = start.ends
    # One batch is stored on a worker thread (MongoDB's time is spent waiting on a socket) while
    # the next is fetched and validated; each batch is committed after its own store, in order.
    in_flight: tuple[Batch, Future[Stored]] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="drain-store") as worker:
        while True:
            waiting = {tp: marks[tp] - consumer.position(tp) for tp in assigned}
            waiting = {tp: count for tp, count in waiting.items() if count > 0}
            summary.left = sum(waiting.values())
            if not waiting:
                summary.stopped = "caught up"
                break
            if summary.consumed >= settings.drain_max_records:
                summary.stopped = f"record cap ({settings.drain_max_records})"
                break
            if time.monotonic() - started >= settings.drain_max_seconds:
                summary.stopped = f"time cap ({settings.drain_max_seconds:g} s)"
                break
            # A partition past its mark is paused so its new messages are not even fetched.
            consumer.pause(*(tp for tp in assigned if tp not in waiting))
            polled = consumer.poll(
                timeout_ms=POLL_TIMEOUT_MS,
                max_records=min(
                    settings.drain_batch_size, settings.drain_max_records - summary.consumed
                ),
            )
            records = [
                record
                for tp, part in polled.items()
                for record in part
                if record.offset < marks[tp]
            ]
            if not records:
                continue
            _check_topic(ids, settings, topic_id)
            summary.consumed += len(records)
            batch = in_epochs(prepare_batch(records, topic_id), epochs)
            if in_flight is not None:
                _finish(consumer, *in_flight, summary)
            in_flight = (batch, worker.submit(_store, store, batch, settings))
        if in_flight is not None:
            _finish(consumer, *in_flight, summary)
    summary.seconds = round(time.monotonic() - started, 3)
    log.info("drain of %s finished: %s", topic, summary)
    return summary
