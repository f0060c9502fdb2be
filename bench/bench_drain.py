"""Benchmark: the DAG's two tasks against the real Kafka and MongoDB, next to their baselines.

In one run, on a topic and databases of its own (deleted at the end):

1. Drain (task 1) of a backlog of 200,000 events waiting in Kafka:
   a. baseline: the same backlog read by the same consumer alone (another group, nothing stored);
   b. baseline: the same documents written with `insert_many` alone, in the drain's batch size;
   c. `drain_user_events`: validation, events, pending batches, offset commits.
   The drain can at best match a and b back to back (1 / (1/a + 1/b)); it prints that figure too.
2. Counts (task 2): `refresh_event_counts` for the same 10,000-event batch when MongoDB already
   holds 10,000 and then 1,000,000 counted events, of 2,000 and then 200,000 users (so the counts
   collection grows too). The history is written directly, as earlier drains and refreshes would
   have left it. The ratio of the two times should stay close to 1. `--recount` also times a
   recount of the batch's pairs from the events collection ($match + $group), the approach this
   design avoids. Each scenario ends by checking that the counts add up to every stored event.
   Target: at least 10,000 events/s.
3. DAG work: one `airflow dags test` run over a backlog of 60,000 events from 6,000 users, minus
   an empty run's time (Airflow's own start-up and bookkeeping), both on a metadata database of
   their own. Target: the backlog stored and counted exactly at 5,000 events/s or more.

With `task infra-up` in local mode, MongoDB is FerretDB 1.24 (SQLite backend): its figures, not
mongod's, are what this prints there.

    .venv/bin/python bench/bench_drain.py [--backlog 200000] [--batch 10000]
        [--histories 10000 1000000] [--recount] [--dag-backlog 60000]
        [--only drain|counts|dag]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Producer
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

# Run as a script from anywhere: the repository root holds the `app` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.airflow_runner import dags_test
from app.core.clients import Document, kafka_admin, mongo_client
from app.core.config import Settings, get_settings
from app.core.topics import ensure_topics
from app.pipeline.counts import apply_batches, refresh_event_counts
from app.pipeline.documents import pending_batches, prepare_batch
from app.pipeline.drain import drain_user_events, open_consumer
from app.pipeline.store import EventStore
from app.schemas import EventAttributes, EventName, UserEvent

BATCH_USERS = 2_000  # the users of the measured batch; every history includes them
EVENTS_PER_HISTORY_USER = 5
CHUNK = 10_000
KAFKA_TIME = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp() * 1000)


def event_values(count: int, users: int, seed: int) -> Iterator[bytes]:
    """`count` valid events (as Kafka holds them) of `users` users, generated lazily."""
    rng = random.Random(seed)
    names = list(EventName)
    start = datetime(2026, 11, 27, 10, tzinfo=UTC)
    for n in range(count):
        yield UserEvent(
            user_id=f"bench-user-{rng.randrange(users)}",
            session_id=f"bench-session-{n // 4}",
            event_name=rng.choice(names),
            timestamp=start + timedelta(milliseconds=n),
            attributes=EventAttributes(
                product_id=f"bench-product-{rng.randrange(500)}",
                price=round(rng.uniform(1, 900), 2),
                discount=rng.choice([0.0, 0.0, 0.1, 0.2]),
            ),
        ).to_json_bytes()


def isolated(base: Settings, **changes: object) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return base.model_copy(
        update={
            "topic_user_events": f"bench-{tag}-UserEvents",
            "mongo_database": f"bench_{tag}",
            "drain_group_id": f"bench-{tag}-drain",
            **changes,
        }
    )


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>9,.0f} events/s  ({seconds:6.1f} s)"


# ----------------------------------------------------------------------------- task 1


def consume_alone(settings: Settings) -> tuple[list[ConsumerRecord], float]:
    """Baseline a: read the whole topic with the drain's consumer settings, store nothing."""
    consumer = open_consumer(settings)
    try:
        consumer.subscribe([settings.topic_user_events])
        records: list[ConsumerRecord] = []
        started = time.perf_counter()
        marks: dict[TopicPartition, int] = {}
        while True:
            polled = consumer.poll(timeout_ms=500, max_records=settings.drain_batch_size)
            for part in polled.values():
                records += part
            assigned = consumer.assignment()
            new = [tp for tp in assigned if tp not in marks]
            if new:
                marks.update(consumer.end_offsets(new))
            if assigned and all(consumer.position(tp) >= marks[tp] for tp in assigned):
                return records, time.perf_counter() - started
    finally:
        consumer.close(autocommit=False)


def insert_alone(settings: Settings, records: list[ConsumerRecord]) -> float:
    """Baseline b: insert the drain's documents for `records`, timing only `insert_many`."""
    spent = 0.0
    with EventStore.open(settings) as store:
        store.ensure_indexes()  # the drain writes into an indexed collection too
        for start in range(0, len(records), settings.drain_batch_size):
            batch = records[start : start + settings.drain_batch_size]
            documents = prepare_batch(batch, None).events
            started = time.perf_counter()
            store.events.insert_many(documents, ordered=False)
            spent += time.perf_counter() - started
    return spent


def bench_drain(base: Settings, backlog: int) -> None:
    settings = isolated(base, drain_max_records=backlog, drain_max_seconds=24 * 3600.0)
    ensure_topics(settings, [settings.topic_user_events])
    with EventStore.open(settings) as store:
        store.ensure_indexes()
    baseline = settings.model_copy(update={"drain_group_id": f"{settings.drain_group_id}-baseline"})
    insert_target = settings.model_copy(update={"mongo_database": f"{settings.mongo_database}_b"})
    try:
        producer = Producer({"bootstrap.servers": settings.kafka_servers, "linger.ms": 20})
        for value in event_values(backlog, BATCH_USERS, seed=1):
            producer.produce(settings.topic_user_events, value)
            producer.poll(0)
        producer.flush(120)

        records, consume_seconds = consume_alone(baseline)
        insert_seconds = insert_alone(insert_target, records)
        del records
        summary = drain_user_events(settings)
        assert summary.consumed == summary.stored == backlog, summary

        serial = 1 / (consume_seconds / backlog + insert_seconds / backlog)
        print(
            f"\nTask 1: drain a backlog of {backlog:,} events "
            f"({settings.kafka_partitions} partitions, batches of {settings.drain_batch_size:,})"
        )
        print(f"  a. consumer alone (baseline)      {rate(backlog, consume_seconds)}")
        print(f"  b. insert_many alone (baseline)   {rate(backlog, insert_seconds)}")
        print(f"     a then b, back to back         {serial:>9,.0f} events/s")
        print(f"  c. drain_user_events              {rate(backlog, summary.seconds)}")
        print(
            f"     = {backlog / summary.seconds / serial:.2f} x the back-to-back baseline, "
            f"{insert_seconds / summary.seconds:.2f} x insert_many alone (target >= 0.8)"
        )
    finally:
        admin = kafka_admin(settings)  # kept until its deletion is done (`_DESTROY` otherwise)
        for deleted in admin.delete_topics([settings.topic_user_events]).values():
            deleted.result()
        client = mongo_client(settings)
        client.drop_database(settings.mongo_database)
        client.drop_database(insert_target.mongo_database)
        client.close()


# ----------------------------------------------------------------------------- task 2


def synthetic_records(
    settings: Settings, values: Iterator[bytes], first: int
) -> Iterator[ConsumerRecord]:
    """Records as the drain would poll them: round-robin over partitions, offsets from `first`."""
    partitions = settings.kafka_partitions
    for n, value in enumerate(values, start=first):
        yield ConsumerRecord(
            settings.topic_user_events,
            n % partitions,
            -1,
            n // partitions,
            KAFKA_TIME,
            0,
            None,
            value,
            [],
            None,
            -1,
            len(value),
            -1,
        )


def chunks(records: Iterator[ConsumerRecord]) -> Iterator[list[ConsumerRecord]]:
    chunk: list[ConsumerRecord] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_history(settings: Settings, store: EventStore, history: int) -> int:
    """`history` stored events and their counts, as earlier drains and refreshes leave them.

    Returns the number of (UserId, EventName) pairs.
    """
    users = max(BATCH_USERS, history // EVENTS_PER_HISTORY_USER)
    counts: dict[str, Document] = {}
    values = event_values(history, users, seed=2)
    for chunk in chunks(synthetic_records(settings, values, first=0)):
        batch = prepare_batch(chunk, None)
        store.insert_new(store.events, batch.events)
        apply_batches(counts, pending_batches(batch.events, batch.first_offsets, "history"))
    documents = list(counts.values())
    for start in range(0, len(documents), CHUNK):
        store.counts.insert_many(documents[start : start + CHUNK], ordered=False)
    return len(documents)


def bench_counts(base: Settings, batch_size: int, history: int, recount: bool) -> float:
    settings = isolated(base)
    # Full scans of a big collection on FerretDB (the final check) outlast the usual timeouts.
    client = mongo_client(settings, timeout_ms=120_000)
    store = EventStore.connect(settings, client)
    store.ensure_indexes()
    try:
        started = time.perf_counter()
        pairs = write_history(settings, store, history)
        setup = time.perf_counter() - started
        # The measured batch: the same events in every scenario, after the history's offsets.
        values = event_values(batch_size, BATCH_USERS, seed=3)
        batch = prepare_batch(list(synthetic_records(settings, values, first=history)), None)
        store.insert_new(store.events, batch.events)
        store.insert_new(store.pending, pending_batches(batch.events, batch.first_offsets, "new"))

        summary = refresh_event_counts(settings)

        print(
            f"  history {history:>9,} events, {pairs:>7,} pairs:  refresh {summary.seconds:6.2f} s "
            f"for {summary.events_counted:,} events / {summary.pairs_written:,} pairs "
            f"= {summary.events_counted / summary.seconds:,.0f} events/s (target >= 10,000; "
            f"history written in {setup:.0f} s)"
        )
        if recount:
            users = sorted({p["UserId"] for b in batch.pending for p in b["Pairs"]})
            started = time.perf_counter()
            list(
                store.events.aggregate(
                    [
                        {"$match": {"UserId": {"$in": users}}},
                        {"$group": {"_id": {"u": "$UserId", "e": "$EventName"}, "n": {"$sum": 1}}},
                    ]
                )
            )
            print(
                f"  {'':>40}recount from events {time.perf_counter() - started:6.2f} s"
                " (the approach avoided)"
            )
        [total] = store.counts.aggregate([{"$group": {"_id": None, "n": {"$sum": "$EventCount"}}}])
        assert total["n"] == history + batch_size, (total, history + batch_size)
        return summary.seconds
    finally:
        client.drop_database(settings.mongo_database)
        client.close()


# ----------------------------------------------------------------------------- DAG work


def timed_dag_run(settings: Settings) -> float:
    started = time.perf_counter()
    run = dags_test(settings, migrate=False)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"airflow dags test failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return seconds


def bench_dag(base: Settings, backlog: int, users: int) -> None:
    settings = isolated(base, postgres_airflow_database="airflow_bench")
    ensure_topics(settings, [settings.topic_user_events])
    client = mongo_client(settings, timeout_ms=120_000)
    store = EventStore.connect(settings, client)
    store.ensure_indexes()
    try:
        migrated = dags_test(settings)  # migrates the metadata database; an empty run
        if migrated.returncode != 0:
            raise SystemExit(
                f"airflow failed:\n{migrated.stdout[-3000:]}\n{migrated.stderr[-3000:]}"
            )
        empty = timed_dag_run(settings)
        producer = Producer({"bootstrap.servers": settings.kafka_servers, "linger.ms": 20})
        values = list(event_values(backlog, users, seed=4))
        for value in values:
            producer.produce(settings.topic_user_events, value)
            producer.poll(0)
        producer.flush(120)
        full = timed_dag_run(settings)

        expected: dict[tuple[str, str], int] = {}
        for value in values:
            event = UserEvent.model_validate_json(value)
            pair = (event.user_id, event.event_name.value)
            expected[pair] = expected.get(pair, 0) + 1
        stored = {(d["UserId"], d["EventName"]): d["EventCount"] for d in store.counts.find()}
        exact = stored == expected and store.events.count_documents({}) == backlog
        work = full - empty
        print(
            f"\nDAG work: one `airflow dags test` run over {backlog:,} events of {users:,} users "
            f"({len(expected):,} pairs)"
        )
        print(f"  empty run (baseline)              {empty:6.1f} s")
        print(f"  run with the backlog              {full:6.1f} s")
        print(
            f"  work (difference)                 {rate(backlog, work)}  target >= 5,000 events/s; "
            f"counts {'exact' if exact else 'WRONG'}"
        )
        if not exact:
            raise SystemExit("the DAG run left wrong counts")
    finally:
        admin = kafka_admin(settings)
        for deleted in admin.delete_topics([settings.topic_user_events]).values():
            deleted.result()
        client.drop_database(settings.mongo_database)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--histories", type=int, nargs=2, default=[10_000, 1_000_000])
    parser.add_argument("--recount", action="store_true")
    parser.add_argument("--dag-backlog", type=int, default=60_000)
    parser.add_argument("--dag-users", type=int, default=6_000)
    parser.add_argument("--only", choices=["drain", "counts", "dag"])
    args = parser.parse_args()
    settings = get_settings()
    with mongo_client(settings) as client:
        server = client.server_info()
    mongo = f"FerretDB {server['ferretdbVersion']}" if "ferretdbVersion" in server else "mongod"
    print(
        f"MongoDB: {mongo} (wire version {server.get('version')}) at {settings.mongo_url}; "
        f"Kafka at {settings.kafka_servers}"
    )

    if args.only in (None, "drain"):
        bench_drain(settings, args.backlog)
    if args.only in (None, "dag"):
        bench_dag(settings, args.dag_backlog, args.dag_users)
    if args.only not in (None, "counts"):
        return
    small, large = args.histories
    print(f"\nTask 2: refresh_event_counts for the same {args.batch:,}-event batch")
    small_seconds = bench_counts(settings, args.batch, small, args.recount)
    large_seconds = bench_counts(settings, args.batch, large, args.recount)
    print(
        f"  ratio {large:,} / {small:,} history: {large_seconds / small_seconds:.2f} "
        f"(target: close to 1)"
    )


if __name__ == "__main__":
    main()
