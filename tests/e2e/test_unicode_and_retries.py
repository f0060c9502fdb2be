"""Ids in any script, retried requests and conflicting orders, through every hop.

Real API (in-process app, real producer), Kafka, the drain and counts on MongoDB, the Spark
stream into S3, the analyses and the PostgreSQL table: ids with Turkish letters, `@`, `+`,
spaces, emoji, `$` and `.` arrive unchanged everywhere; a request sent twice (a client's retry)
is stored and counted once; the same `OrderId` sent with other content is kept, reported and
counted once.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from psycopg2 import sql
from pyspark.sql import SparkSession

from app.analysis.purchases import (
    dedupe_orders,
    order_conflicts,
    read_purchases,
    repeat_purchases,
    repeat_rows,
)
from app.analysis.repeat_store import ensure_schema, replace_repeat_purchases
from app.api.main import create_app
from app.api.routes import EVENT_EXAMPLE, PURCHASE_EXAMPLE
from app.core.clients import mongo_client, postgres_connection
from app.core.config import Settings, get_settings
from app.lake.queries import start_queries
from app.lake.session import build_spark_session
from app.pipeline.counts import refresh_event_counts
from app.pipeline.drain import drain_user_events
from app.status import lake_orders
from tests.analysis.conftest import discard
from tests.lake.helpers import arrow_orders
from tests.support import event_store

USERS = [
    "ayşe.yılmaz+alışveriş@örnek.com.tr",
    "Çağrı Öztürk",
    "İĞÜŞÖÇ ığüşöç",
    "🛒 müşteri 🎉",
    "$where",
    "user.with.dots",
    "a$b.c",
    "雪",
]
PRODUCTS = ["ürün-çay-ğ", "P.1$", "🍵", "a b c"]
REFUSED = ["a\x00b", "tab\there", "line\nbreak", "zero\u200bwidth", " leading", "trailing ", ""]
START = datetime(2026, 11, 27, 10, 15, tzinfo=UTC)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    # The lake and analysis tests' arguments: one JVM per pytest process serves them all.
    session = build_spark_session(get_settings(), "lake-tests", kafka=True, master="local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def scope(isolated_settings: Settings) -> Iterator[Settings]:
    yield isolated_settings
    discard(isolated_settings)
    client = mongo_client(isolated_settings)
    client.drop_database(isolated_settings.mongo_database)
    client.close()


def event(n: int, user: str, product: str) -> dict[str, Any]:
    return {
        **copy.deepcopy(EVENT_EXAMPLE),
        "UserId": user,
        "SessionId": f"oturum {n} ✓",
        "EventName": ["PageVisited", "AddedBasket", "CheckedProductReviews"][n % 3],
        "TimeStamp": (START + timedelta(seconds=n)).isoformat(),
        "Attributes": {"ProductId": product, "Price": 10.0 + n, "Discount": 0.0},
    }


def order(n: int, user: str, product: str) -> dict[str, Any]:
    line = {"ProductId": product, "ItemCount": 1 + n % 3, "ItemPrice": 5.0, "ItemDiscount": 0.0}
    return {
        **copy.deepcopy(PURCHASE_EXAMPLE),
        "OrderId": f"sipariş №{n} $.{user}",
        "UserId": user,
        "SessionId": f"oturum {n}",
        "TimeStamp": (START + timedelta(minutes=n)).isoformat(),
        "TotalPrice": line["ItemCount"] * 5.0,
        "Products": [line],
    }


def test_ids_in_any_script_retries_and_conflicts_through_every_hop(
    scope: Settings, spark: SparkSession
) -> None:
    settings = scope
    events = [
        event(n, user, PRODUCTS[n % len(PRODUCTS)]) for n, user in enumerate(USERS * 3, start=1)
    ]
    # Every user buys the same product in two orders: a repeat purchase each.
    orders = [order(n, USERS[n % len(USERS)], PRODUCTS[n % 2]) for n in range(2 * len(USERS))]
    conflicting = {**orders[0], "PaymentType": "BankTransfer"}
    assert conflicting["PaymentType"] != orders[0]["PaymentType"]

    with TestClient(create_app(settings)) as client:
        for sent in events:
            assert client.put("/SendEvent", json=sent).status_code == 200
        # A client that timed out sends the same requests again.
        for sent in events[:5]:
            assert client.put("/SendEvent", json=sent).status_code == 200
        for _ in range(2):
            assert client.post("/PurchasedItems", json=orders).status_code == 200
        assert client.post("/PurchasedItems", json=[conflicting]).status_code == 200

        for value in REFUSED:
            refused = client.put("/SendEvent", json={**events[0], "UserId": value})
            assert refused.status_code == 422, value
            assert [e["field"] for e in refused.json()["errors"]] == ["UserId"]

    # Airflow's two tasks: every event once, counted once, ids unchanged.
    drained = drain_user_events(settings)
    refresh_event_counts(settings)
    assert (drained.stored, drained.duplicates) == (len(events), 5)
    store = event_store(settings)
    assert sorted(d["UserId"] for d in store.events.find()) == sorted(e["UserId"] for e in events)
    counts = {(d["UserId"], d["EventName"]): d["EventCount"] for d in store.counts.find()}
    assert counts == dict(Counter((e["UserId"], e["EventName"]) for e in events))

    # The stream lands every delivery; the analyses count each order once.
    queries = start_queries(spark, settings, available_now=True)
    for query in queries:
        query.awaitTermination()
        assert query.exception() is None
    landed = arrow_orders(settings)
    assert Counter(row["OrderId"] for row in landed) == Counter(
        [o["OrderId"] for o in orders] * 2 + [conflicting["OrderId"]]
    )
    assert {row["UserId"] for row in landed} == set(USERS)

    purchases = read_purchases(spark, settings.purchases_url)
    kept = dedupe_orders(purchases)
    assert kept.count() == len(orders)
    assert set(order_conflicts(purchases)["OrderId"]) == {orders[0]["OrderId"]}
    [_, conflict] = lake_orders(settings)
    assert "CONFLICT: 1 OrderIds" in conflict and orders[0]["OrderId"] in conflict

    pairs = list(repeat_rows(repeat_purchases(kept)))
    conn = postgres_connection(settings)
    try:
        ensure_schema(conn, settings)
        replace_repeat_purchases(conn, settings, pairs)
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT user_id, product_id, order_count FROM {}").format(
                    sql.Identifier(settings.repeat_purchases_table)
                )
            )
            stored_pairs = sorted(cur.fetchall())
    finally:
        conn.close()
    # The conflicting order counts once, as its later version (same user and product).
    bought = Counter((o["UserId"], o["Products"][0]["ProductId"]) for o in orders)
    assert stored_pairs == sorted((u, p, n) for (u, p), n in bought.items() if n > 1)
    assert {u for u, _, _ in stored_pairs} == set(USERS)
