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
