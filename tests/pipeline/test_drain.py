"""Task 1, the drain: every waiting event stored once, poison quarantined, offsets committed last.

The first tests check how polled records become documents (no services). The others run the
drain against the real Kafka and MongoDB, each on a topic, database and group of its own.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from confluent_kafka import Producer
from kafka.consumer.fetcher import ConsumerRecord

from app.core.config import Settings
from app.core.topics import ensure_topics
from app.infra.mongo import Mongo
from app.pipeline.counts import mark_key, refresh_event_counts
from app.pipeline.documents import (
    event_id,
    in_epochs,
    pending_batches,
    prepare_batch,
    same_delivery,
)
from app.pipeline.drain import DrainError, drain_user_events, partition_groups
from tests.pipeline.helpers import (
    commit_offsets,
    committed_offsets,
    expected_counts,
    make_events,
    pipeline_settings,
    produce,
    produce_events,
    run_child,
    stored_counts,
)
from tests.support import event_store, spare_kafka

KAFKA_TIME = 1795822621496  # ms since the epoch


def record(offset: int, value: bytes | None, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(
        "UserEvents", partition, -1, offset, KAFKA_TIME, 0, None, value, [], None, -1, -1, -1
    )


# ----------------------------------------------------------------------- records -> documents


TOPIC_ID = "q7cmJ3xUQ8uVvZNPV5L8Wg"


def test_valid_event_keeps_its_fields_and_kafka_coordinates() -> None:
    event = make_events(1)[0]
    batch = prepare_batch([record(41, event.to_json_bytes(), partition=2)], TOPIC_ID)

    [document] = batch.events
    assert document["_id"] == event_id(event)
    assert {k: document[k] for k in ("UserId", "SessionId", "EventName", "Attributes")} == {
        k: v for k, v in event.to_wire().items() if k != "TimeStamp"
    }
    assert document["TimeStamp"] == event.timestamp
    assert document["TimeStamp"].tzinfo is not None
    assert document["Kafka"] == {
        "Topic": "UserEvents",
        "TopicId": TOPIC_ID,
        "Partition": 2,
        "Offset": 41,
        "Timestamp": datetime.fromtimestamp(KAFKA_TIME / 1000, UTC),
    }
    assert batch.quarantine == []


def test_same_message_gives_the_same_documents() -> None:
    value = make_events(1)[0].to_json_bytes()
    first = prepare_batch([record(7, value)], TOPIC_ID)
    second = prepare_batch([record(7, value)], TOPIC_ID)
    assert first.events == second.events


def test_an_event_has_the_same_id_however_it_is_written_and_wherever_it_lands() -> None:
    event = make_events(1)[0]
    wire = event.to_wire()
    # Same content: keys in another order, the time in another zone, prices as integers.
    rewritten = {
        "Attributes": {**wire["Attributes"], "Price": 120, "Discount": 0},
        **{k: v for k, v in wire.items() if k != "Attributes"},
        "TimeStamp": event.timestamp.astimezone(timezone(timedelta(hours=3))).isoformat(),
    }
    same = {**wire, "Attributes": {**wire["Attributes"], "Price": 120.0, "Discount": 0.0}}
    other = {**same, "SessionId": "another-session"}
    batch = prepare_batch(
        [
            record(1, json.dumps(same).encode(), partition=0),
            record(9, json.dumps(rewritten).encode(), partition=2),
            record(2, json.dumps(other).encode(), partition=0),
        ],
        TOPIC_ID,
    )

    ids = [document["_id"] for document in batch.events]
    assert ids[0] == ids[1] != ids[2]


VALID = json.loads(make_events(1)[0].to_json_bytes())


@pytest.mark.parametrize(
    ("value", "reason", "encoding"),
    [
        (b"not json", "not JSON", "utf-8"),
        (b"\xff\xfe\x00binary", "not JSON", "base64"),
        (None, "tombstone", None),
        (b"[1, 2]", "not a JSON object", "utf-8"),
        (json.dumps({**VALID, "EventName": "Bought"}).encode(), "EventName", "utf-8"),
        (json.dumps({k: v for k, v in VALID.items() if k != "UserId"}).encode(), "UserId", "utf-8"),
        (json.dumps({**VALID, "TimeStamp": "2026-11-27T10:15:00"}).encode(), "time zone", "utf-8"),
        (json.dumps({**VALID, "Extra": 1}).encode(), "Extra", "utf-8"),
    ],
)
def test_invalid_message_is_quarantined_with_reason_and_raw_value(
    value: bytes | None, reason: str, encoding: str | None
) -> None:
    batch = prepare_batch([record(3, value)], TOPIC_ID)

    assert batch.events == []
    [document] = batch.quarantine
    assert document["_id"] == f"UserEvents:{TOPIC_ID}:0:3"
    assert reason in document["Reason"]
    assert document["RawEncoding"] == encoding
    if encoding == "utf-8":
        assert document["RawValue"] == value.decode()  # type: ignore[union-attr]
    # The poison message is committed past like any other: it never blocks the partition.
    assert batch.commit == {("UserEvents", 0): 4}


def test_pending_batch_lists_every_offset_of_each_pair_per_partition() -> None:
    a, b = make_events(2, users=1)
    a_pair = (a.user_id, a.event_name.value)
    records = [
        record(10, b"poison", partition=0),
        record(11, a.to_json_bytes(), partition=0),
        record(12, b.to_json_bytes(), partition=0),
        record(13, a.to_json_bytes(), partition=0),
        record(5, a.to_json_bytes(), partition=1),
    ]
    batch = prepare_batch(records, TOPIC_ID)
    pending = pending_batches(batch.events, batch.first_offsets, "tok")

    by_partition = {p["Partition"]: p for p in pending}
    assert {p["TopicId"] for p in pending} == {TOPIC_ID}
    assert by_partition[0]["_id"] == f"{0:05d}:{10:020d}:tok"
    assert by_partition[0]["FirstOffset"] == 10  # the range starts at the poison message
    pairs = {(p["UserId"], p["EventName"]): p["Offsets"] for p in by_partition[0]["Pairs"]}
    if (b.user_id, b.event_name.value) == a_pair:
        assert pairs == {a_pair: [11, 12, 13]}
    else:
        assert pairs[a_pair] == [11, 13]
    assert by_partition[0]["PairCount"] == len(pairs)
    assert by_partition[1]["Pairs"] == [
        {"UserId": a.user_id, "EventName": a.event_name.value, "Offsets": [5]}
    ]
    assert batch.commit == {("UserEvents", 0): 14, ("UserEvents", 1): 6}


def test_a_new_epoch_makes_the_same_offset_another_message_with_marks_of_its_own() -> None:
    """After a partition's offsets went back, offset 3 of epoch 1 is not offset 3 of epoch 0:
    its event is not "read again" (counted afresh only if new), its poison gets its own `_id`,
    and its pending batch counts under marks of its own."""
    event = make_events(1)[0]
    before = prepare_batch([record(3, event.to_json_bytes()), record(4, b"poison")], TOPIC_ID)
    after = in_epochs(
        prepare_batch([record(3, event.to_json_bytes()), record(4, b"poison")], TOPIC_ID), {0: 1}
    )

    assert not same_delivery(before.events[0], after.events[0])
    assert (
        after.quarantine[0]["_id"] == f"UserEvents:{TOPIC_ID}:0:4:1" != before.quarantine[0]["_id"]
    )
    [pending] = pending_batches(after.events, after.first_offsets, "tok")
    assert mark_key(pending) == f"{TOPIC_ID}:0:1"


# ----------------------------------------------------------------------- against Kafka and Mongo


def test_drain_stores_every_waiting_event_once(lab_services: Settings) -> None:
    events = make_events(1500)
    with pipeline_settings(lab_services, drain_batch_size=400) as settings:
        produce_events(settings, events)

        summary = drain_user_events(settings)

        assert (summary.consumed, summary.stored, summary.already_stored) == (1500, 1500, 0)
        assert summary.stopped == "caught up" and summary.left == 0
        assert summary.batches >= 4  # batches of at most 400
        store = event_store(settings)
        assert store.events.count_documents({}) == 1500
        assert sum(committed_offsets(settings).values()) == 1500
        refresh_event_counts(settings)
        assert stored_counts(settings) == expected_counts(events)

        again = drain_user_events(settings)
        assert (again.consumed, again.stopped) == (0, "caught up")


def test_poison_messages_are_quarantined_and_the_rest_stored(lab_services: Settings) -> None:
    events = make_events(300)
    poison: list[bytes | None] = [b"{oops", b"\x80\x81", None, b'{"UserId": "u1"}', b"42"]
    with pipeline_settings(lab_services) as settings:
        produce(settings, [*poison[:2], *(e.to_json_bytes() for e in events), *poison[2:]])

        summary = drain_user_events(settings)

        assert (summary.consumed, summary.stored, summary.quarantined) == (305, 300, 5)
        store = event_store(settings)
        quarantined = list(store.quarantine.find())
        assert len(quarantined) == 5
        assert all(document["Reason"] for document in quarantined)
        assert {d["RawValue"] for d in quarantined if d["RawEncoding"] == "utf-8"} == {
            "{oops",
            '{"UserId": "u1"}',
            "42",
        }
        assert store.events.count_documents({}) == 300
        # Poison never blocks: everything is committed, the next run has nothing left.
        assert sum(committed_offsets(settings).values()) == 305
        assert drain_user_events(settings).consumed == 0
        refresh_event_counts(settings)
        assert stored_counts(settings) == expected_counts(events)


def test_empty_topic_succeeds_and_changes_nothing(lab_services: Settings) -> None:
    with pipeline_settings(lab_services) as settings:
        summary = drain_user_events(settings)
        counts = refresh_event_counts(settings)

        assert (summary.consumed, summary.stopped) == (0, "caught up")
        assert counts.events_counted == 0 and counts.pairs_written == 0
        store = event_store(settings)
        for collection in (store.events, store.quarantine, store.counts, store.pending):
            assert collection.count_documents({}) == 0


def test_drain_ends_while_a_producer_keeps_writing(lab_services: Settings) -> None:
    events = make_events(20_000, users=200)
    with pipeline_settings(lab_services, drain_batch_size=500) as settings:
        produce_events(settings, events[:2000])
        stop = threading.Event()
        sent = 2000

        def keep_producing() -> None:
            nonlocal sent
            while not stop.is_set() and sent < len(events):
                produce_events(settings, events[sent : sent + 100])
                sent += 100

        producer = threading.Thread(target=keep_producing)
        producer.start()
        try:
            started = time.monotonic()
            summary = drain_user_events(settings)
            took = time.monotonic() - started
        finally:
            stop.set()
            producer.join()

        assert summary.stopped == "caught up"
        assert summary.consumed >= 2000
        assert took < settings.drain_max_seconds
        # What arrived after the start is left for the next run, which stores it.
        rest = drain_user_events(settings)
        assert summary.consumed + rest.consumed == sent
        refresh_event_counts(settings)
        assert stored_counts(settings) == expected_counts(events[:sent])
        assert event_store(settings).events.count_documents({}) == sent


def test_record_cap_leaves_the_rest_for_the_next_runs(lab_services: Settings) -> None:
    events = make_events(1200)
    with pipeline_settings(lab_services, drain_max_records=500) as settings:
        produce_events(settings, events)

        first = drain_user_events(settings)
        assert (first.consumed, first.stopped, first.left) == (500, "record cap (500)", 700)
        refresh_event_counts(settings)
        second = drain_user_events(settings)
        third = drain_user_events(settings)

        assert (second.consumed, third.consumed, third.stopped) == (500, 200, "caught up")
        refresh_event_counts(settings)
        assert stored_counts(settings) == expected_counts(events)


def drain_crashing_at_first_commit(settings: Settings) -> None:
    """A drain in its own process that dies, like a killed worker, when it first commits: after
    storing a batch, before its offsets are committed."""
    crashed = run_child(
        settings,
        "from kafka import KafkaConsumer\n"
        "KafkaConsumer.commit = lambda self, *args, **kwargs: os._exit(3)",
        "drain_user_events(get_settings())",
    )
    assert crashed.returncode == 3, crashed.stderr


def test_crash_between_insert_and_commit_then_rerun(lab_services: Settings) -> None:
    events = make_events(1000)
    with pipeline_settings(lab_services) as settings:
        produce_events(settings, events)

        drain_crashing_at_first_commit(settings)
        store = event_store(settings)
        stored_before_crash = store.events.count_documents({})
        assert stored_before_crash > 0
        assert committed_offsets(settings) == {}

        rerun = drain_user_events(settings)

        assert rerun.consumed == 1000
        assert rerun.already_stored == stored_before_crash
        assert rerun.stored == 1000 - stored_before_crash
        assert store.events.count_documents({}) == 1000
        refresh_event_counts(settings)
        assert stored_counts(settings) == expected_counts(events)


def test_parallel_drains_on_their_own_partitions_count_exactly_through_a_crash(
    lab_services: Settings,
) -> None:
    """Three drains, one per partition, run side by side in three processes (as the DAG's mapped
    drain tasks do). The one on partition 0 dies after storing its first batch, before its
    commit. A tenth of the events were sent twice by a retrying client, each copy to another
    partition than the original. Another round of parallel drains then finishes: every event
    is stored once and counted once, and every partition is committed to its end."""
    events = make_events(3000)
    with pipeline_settings(lab_services, drain_parallelism=3, drain_batch_size=200) as settings:
        producer = Producer({"bootstrap.servers": settings.kafka_servers})
        for n, event in enumerate(events):
            producer.produce(settings.topic_user_events, event.to_json_bytes(), partition=n % 3)
            if n % 10 == 0:  # the retry lands in the next partition
                retry = event.to_json_bytes()
                producer.produce(settings.topic_user_events, retry, partition=(n + 1) % 3)
            producer.poll(0)
        assert producer.flush(30) == 0
        groups = partition_groups(settings)
        assert groups == [[0], [1], [2]]

        crash = "from kafka import KafkaConsumer\n"
        crash += "KafkaConsumer.commit = lambda self, *args, **kwargs: os._exit(3)"
        with ThreadPoolExecutor(3) as pool:
            first = list(
                pool.map(
                    lambda group: run_child(
                        settings,
                        crash if group == [0] else "",
                        f"print(drain_user_events(get_settings(), {group}).stored)",
                    ),
                    groups,
                )
            )
        assert [child.returncode for child in first] == [3, 0, 0], [c.stderr for c in first]
        committed = committed_offsets(settings)
        assert 0 not in committed and committed[1] > 0 and committed[2] > 0

        with ThreadPoolExecutor(3) as pool:
            second = list(pool.map(lambda group: drain_user_events(settings, group), groups))

        assert all(summary.stopped == "caught up" for summary in second)
        assert second[0].already_stored > 0  # partition 0's first batch, read again
        assert second[1].consumed == second[2].consumed == 0
        store = event_store(settings)
        assert store.events.count_documents({}) == 3000
        refresh_event_counts(settings)
        assert stored_counts(settings) == expected_counts(events)
        assert committed_offsets(settings) == {0: 1100, 1: 1100, 2: 1100}


def test_mongo_down_during_a_run_fails_clearly_and_loses_nothing(
    spare_mongo: tuple[Settings, Mongo],
) -> None:
    base, mongo = spare_mongo
    events = make_events(2000)
    with pipeline_settings(base, drain_batch_size=300) as settings:
        produce_events(settings, events)

        # Stop MongoDB right after the first batch is stored and committed.
        class StopMongoAfterFirstBatch(logging.Handler):
            def emit(self, entry: logging.LogRecord) -> None:
                if entry.getMessage().startswith("batch 1:"):
                    mongo.stop()

        handler = StopMongoAfterFirstBatch()
        logger = logging.getLogger("app.pipeline.drain")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            with pytest.raises(DrainError) as failure:
                drain_user_events(settings)
        finally:
            logger.removeHandler(handler)

        message = str(failure.value)
        assert "MongoDB" in message and "not committed" in message and "infra-up" in message
        first_batch = sum(committed_offsets(settings).values())
        assert 0 < first_batch <= 300

        mongo.start()
        after = drain_user_events(settings)

        assert after.consumed == 2000 - first_batch
        assert after.stopped == "caught up"
        refresh_event_counts(settings)
        assert event_store(settings).events.count_documents({}) == 2000
        assert stored_counts(settings) == expected_counts(events)


def test_missing_topic_or_unreachable_kafka_say_what_to_do(lab_services: Settings) -> None:
    missing = lab_services.model_copy(update={"topic_user_events": "test-no-such-topic"})
    with pytest.raises(DrainError, match=r"does not exist.*task infra-up"):
        drain_user_events(missing)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(DrainError, match=r"not reachable.*task infra-up"):
        drain_user_events(lab_services.model_copy(update={"kafka_bootstrap_servers": nobody}))


# ----------------------------------------------------------------------- off the happy path


def test_an_event_delivered_twice_is_stored_and_counted_once(lab_services: Settings) -> None:
    events = make_events(300)
    retried = events[:40]
    with pipeline_settings(lab_services, drain_batch_size=100) as settings:
        # A retry lands in the same batch, in later batches of the same run...
        produce_events(settings, [*events, *retried[:10]])
        first = drain_user_events(settings)
        # ...and in a later DAG run, after the counts were refreshed.
        refresh_event_counts(settings)
        produce_events(settings, retried)
        second = drain_user_events(settings)
        refresh_event_counts(settings)

        assert (first.stored, first.duplicates) == (300, 10)
        assert (second.stored, second.duplicates) == (0, 40)
        store = event_store(settings)
        assert store.events.count_documents({}) == 300
        assert stored_counts(settings) == expected_counts(events)
        # The document keeps where the event first landed in Kafka.
        stored = store.events.find_one({"_id": event_id(retried[0])})
        assert stored is not None and stored["Kafka"]["Offset"] >= 0


def test_retried_event_read_again_after_a_crash_is_still_counted_once(
    lab_services: Settings,
) -> None:
    events = make_events(500)
    with pipeline_settings(lab_services) as settings:
        produce_events(settings, [*events, *events[:50]])
        drain_crashing_at_first_commit(settings)

        rerun = drain_user_events(settings)
        refresh_event_counts(settings)

        assert rerun.stored + rerun.already_stored + rerun.duplicates == 550
        assert rerun.duplicates == 50
        assert event_store(settings).events.count_documents({}) == 500
        assert stored_counts(settings) == expected_counts(events)


def delete_topic(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_servers})
    admin.delete_topics([settings.topic_user_events], operation_timeout=30)[
        settings.topic_user_events
    ].result()
    # Deletion is asynchronous on the broker: wait until the name is free again.
    deadline = time.monotonic() + 30
    while settings.topic_user_events in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, "Kafka did not delete the topic"
        time.sleep(0.2)


def test_a_recreated_topic_is_read_from_its_start_and_its_events_counted(
    lab_services: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    events = make_events(600, users=20)
    old, new = events[:400], events[400:]
    with pipeline_settings(lab_services) as settings:
        produce_events(settings, old)
        drain_user_events(settings)
        refresh_event_counts(settings)

        delete_topic(settings)
        ensure_topics(settings, [settings.topic_user_events])
        # Fewer messages than before: offsets 0..199 were all seen in the old topic.
        produce_events(settings, new)
        with caplog.at_level(logging.WARNING, logger="app.pipeline.drain"):
            after = drain_user_events(settings)
        refresh_event_counts(settings)

        assert "re-created" in caplog.text
        assert (after.consumed, after.stored, after.duplicates) == (200, 200, 0)
        assert event_store(settings).events.count_documents({}) == 600
        assert stored_counts(settings) == expected_counts(events)
        # The next run trusts the new topic's committed offsets again.
        assert drain_user_events(settings).resets == 0


def test_a_recreated_topic_drained_while_empty_loses_none_of_its_later_events(
    lab_services: Settings,
) -> None:
    events = make_events(500, users=20)
    old, new = events[:200], events[200:]
    with pipeline_settings(lab_services, kafka_partitions=1) as settings:
        produce_events(settings, old)
        drain_user_events(settings)
        delete_topic(settings)
        ensure_topics(settings, [settings.topic_user_events])
        # Kafka drops a deleted topic's committed offsets; here the group's old one (200)
        # survives, as it does when another tool commits for the group or its offsets are
        # restored. A run before the first new event reads nothing, but must not leave it.
        commit_offsets(settings, {0: 200})
        empty = drain_user_events(settings)
        assert (empty.resets, empty.consumed) == (1, 0)
        produce_events(settings, new)  # 300 new events: past the old offset

        after = drain_user_events(settings)
        refresh_event_counts(settings)

        assert (after.resets, after.consumed, after.stored) == (0, 300, 300)
        assert event_store(settings).events.count_documents({}) == 500
        assert stored_counts(settings) == expected_counts(events)


def test_a_committed_offset_past_the_end_is_noticed_and_nothing_doubled(
    lab_services: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    events = make_events(300)
    with pipeline_settings(lab_services, kafka_partitions=1) as settings:
        produce_events(settings, events[:200])
        drain_user_events(settings)
        refresh_event_counts(settings)
        # What a broker whose data was wiped and refilled looks like to the group: its
        # committed offset lies beyond the partition's end.
        commit_offsets(settings, {0: 10_000})
        produce_events(settings, events[200:])

        with caplog.at_level(logging.WARNING, logger="app.pipeline.drain"):
            after = drain_user_events(settings)
        refresh_event_counts(settings)

        assert "went back" in caplog.text and "committed 10000" in caplog.text
        assert (after.resets, after.went_back) == (1, 1)
        # In the new epoch the events of the old one are duplicates: counted once, before.
        assert (after.consumed, after.stored, after.duplicates) == (300, 100, 200)
        assert stored_counts(settings) == expected_counts(events)


def test_a_broker_whose_data_was_wiped_is_drained_afresh(lab_services: Settings) -> None:
    events = make_events(500, users=25)
    with (
        spare_kafka(lab_services, f"test-wiped-{uuid.uuid4().hex[:6]}") as broker,
        pipeline_settings(
            broker.settings, topic_user_events=broker.settings.topic_user_events
        ) as settings,
    ):
        produce_events(settings, events[:300])
        drain_user_events(settings)
        refresh_event_counts(settings)

        broker.stop()
        shutil.rmtree(broker.data_dir)
        broker.start()
        ensure_topics(settings, [settings.topic_user_events])
        produce_events(settings, events[300:])
        after = drain_user_events(settings)
        refresh_event_counts(settings)

        assert (after.stored, after.duplicates) == (200, 0)
        assert after.resets == settings.kafka_partitions
        assert stored_counts(settings) == expected_counts(events)
