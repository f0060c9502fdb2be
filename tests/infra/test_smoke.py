"""Each of the four services answers its real protocol (issue 2's smoke tests)."""

from __future__ import annotations

import uuid

import psycopg2
from confluent_kafka import Consumer, Producer
from kafka import KafkaConsumer, KafkaProducer
from pymongo import UpdateOne

from app.core.clients import mongo_client, postgres_connection, s3_filesystem
from app.core.config import Settings


def test_kafka_round_trip_on_both_topics(isolated_settings: Settings) -> None:
    s = isolated_settings
    for topic in (s.topic_user_events, s.topic_purchased_item):
        payload = f"smoke-{uuid.uuid4()}".encode()
        producer = Producer({"bootstrap.servers": s.kafka_servers, "acks": "all"})
        producer.produce(topic, key=b"user-1", value=payload)
        assert producer.flush(15) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": s.kafka_servers,
                "group.id": f"smoke-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([topic])
        message = None
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                break
        consumer.close()
        assert message is not None and message.error() is None
        assert (message.key(), message.value()) == (b"user-1", payload)


def test_kafka_python_client_reads_what_it_wrote(isolated_settings: Settings) -> None:
    """The DAG uses kafka-python; check it against the same broker."""
    s = isolated_settings
    producer = KafkaProducer(bootstrap_servers=s.kafka_servers, acks="all")
    producer.send(s.topic_user_events, key=b"k", value=b"kafka-python").get(timeout=15)
    producer.close()
    consumer = KafkaConsumer(
        s.topic_user_events,
        bootstrap_servers=s.kafka_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10000,
        group_id=None,
    )
    values = [record.value for record in consumer]
    consumer.close()
    assert b"kafka-python" in values


def test_mongo_insert_find_upsert_aggregate(isolated_settings: Settings) -> None:
    client = mongo_client(isolated_settings)
    collection = client[isolated_settings.mongo_database]["smoke"]
    collection.insert_many([{"UserId": "u1", "EventName": e} for e in ("A", "A", "B")])
    assert collection.count_documents({"UserId": "u1"}) == 3
    assert collection.find_one({"EventName": "B"}, {"_id": 0}) == {"UserId": "u1", "EventName": "B"}
    collection.bulk_write(
        [UpdateOne({"_id": "pair"}, {"$set": {"EventCount": n}}, upsert=True) for n in (1, 2)]
    )
    assert collection.find_one({"_id": "pair"})["EventCount"] == 2  # type: ignore[index]
    grouped = collection.aggregate(
        [
            {"$match": {"UserId": "u1"}},
            {"$group": {"_id": "$EventName", "n": {"$sum": 1}}},
        ]
    )
    assert {row["_id"]: row["n"] for row in grouped} == {"A": 2, "B": 1}
    client.drop_database(isolated_settings.mongo_database)
    client.close()


def test_mongo_finds_by_id_list_and_by_id_with_conditions_through_the_id_index(
    isolated_settings: Settings,
) -> None:
    """The store reads counts with `_id` `$in` and the lab's FerretDB build answers that (and an
    `_id` plus other conditions) from the `_id` index: right rows, and no table scan."""
    client = mongo_client(isolated_settings)
    database = client[isolated_settings.mongo_database]
    database["smoke"].insert_many([{"_id": f"k{i}", "n": i} for i in range(20)])
    filters = {
        "in": ({"_id": {"$in": ["k3", "k7", "missing"]}}, {"k3", "k7"}),
        "id and condition": ({"_id": "k4", "n": {"$gt": 3}}, {"k4"}),
        "id and failing condition": ({"_id": "k4", "n": {"$gt": 4}}, set()),
        "mixed types": ({"_id": {"$in": ["k1", 1]}}, {"k1"}),
    }
    for name, (query, expected) in filters.items():
        assert {d["_id"] for d in database["smoke"].find(query)} == expected, name
    plans = {
        name: database.command("explain", {"find": "smoke", "filter": query})
        for name, (query, _) in filters.items()
    }
    if "filterPushdown" in plans["in"]:  # FerretDB (a real mongod plans differently)
        for name in ("in", "id and condition"):
            assert plans[name]["filterPushdown"] is True, name
            assert "USING INDEX" in str(plans[name]["queryPlanner"]), name
        assert plans["mixed types"]["filterPushdown"] is False  # not pushed: scanned, still right
    database["smoke"].delete_many({"_id": {"$in": ["k3", "k7"]}})
    assert database["smoke"].count_documents({}) == 18
    client.drop_database(isolated_settings.mongo_database)
    client.close()


def test_s3_put_list_get_delete(isolated_settings: Settings) -> None:
    fs = s3_filesystem(isolated_settings)
    key = f"{isolated_settings.s3_bucket}/{isolated_settings.s3_purchases_prefix}smoke.txt"
    fs.pipe(key, b"hello lake")
    listing = fs.ls(key.rsplit("/", 1)[0])
    assert key in listing
    assert fs.cat(key) == b"hello lake"
    fs.rm(key)
    assert not fs.exists(key)


def test_postgres_insert_select(isolated_settings: Settings) -> None:
    conn = postgres_connection(isolated_settings)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE smoke (id int, name text)")
            cur.execute("INSERT INTO smoke VALUES (1, 'one'), (2, 'two')")
            cur.execute("SELECT name FROM smoke ORDER BY id")
            assert cur.fetchall() == [("one",), ("two",)]
            cur.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = %s",
                (isolated_settings.repeat_purchases_table,),
            )
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_postgres_refuses_a_wrong_password(isolated_settings: Settings) -> None:
    wrong = isolated_settings.model_copy(update={"postgres_password": "not-the-password"})
    try:
        postgres_connection(wrong).close()
    except psycopg2.OperationalError as exc:
        assert "password authentication failed" in str(exc)
    else:
        raise AssertionError("PostgreSQL accepted a wrong password")
