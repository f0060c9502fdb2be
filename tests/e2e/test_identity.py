"""One rule for ids on every hop, and one identity per event, against the real services.

The same hostile ids go through the API (in-process app, real producer) and, byte for byte,
straight into Kafka for the Spark stream: the API's verdict (2xx/4xx) and the stream's (lake or
quarantine) agree on each, and an accepted id is stored alike. Events sent through the API and
drained into MongoDB are one event however a client spells them (NFC or NFD, 0.0 or -0.0), and
the client's `Idempotency-Key` names an event when given.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pyspark.sql import SparkSession

from app.api.main import create_app
from app.api.routes import EVENT_EXAMPLE, PURCHASE_EXAMPLE
from app.core.config import Settings, get_settings
from app.lake.queries import start_queries
from app.lake.session import build_spark_session
from app.pipeline.counts import refresh_event_counts
from app.pipeline.drain import drain_user_events
from tests.lake.helpers import arrow_orders, arrow_rows, produce
from tests.support import event_store

NFC_NAME = "Çağrı Öztürk"
NFD_NAME = unicodedata.normalize("NFD", NFC_NAME)
assert NFD_NAME != NFC_NAME

# case -> (UserId, accepted by both)
HOSTILE_IDS: dict[str, tuple[Any, bool]] = {
    "U+1FAE0, new in Unicode 14 (Java 17 has 13)": ("müşteri \U0001fae0", True),
    "NFD text": (NFD_NAME, True),
    "a trailing line break": ("müşteri\n", False),
    "a trailing U+2028": ("müşteri\u2028", False),
    "a JSON number": (123, False),
    "a lone surrogate escape": ("müşteri \ud800", False),
    "30 characters, 90 once in NFC": ("\ufb2c" * 30, False),
}


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = build_spark_session(get_settings(), "lake-tests", kafka=True, master="local[2]")
    yield session
    session.stop()


def order_json(order_id: str, user_id: Any) -> bytes:
    order = {**copy.deepcopy(PURCHASE_EXAMPLE), "OrderId": order_id, "UserId": user_id}
    # ensure_ascii (the default) writes U+D800 as the escape \ud800, as a client would send it.
    return json.dumps(order).encode()


def test_the_api_and_the_stream_give_every_hostile_id_the_same_verdict(
    isolated_settings: Settings, spark: SparkSession
) -> None:
    settings = isolated_settings
    api_accepted = {}
    with TestClient(create_app(settings)) as client:
        for n, (user_id, _) in enumerate(HOSTILE_IDS.values()):
            body = b"[" + order_json(f"api-{n}", user_id) + b"]"
            response = client.post(
                "/PurchasedItems", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code in (200, 400, 422), response.text
            api_accepted[n] = response.status_code == 200
    # The same orders, byte for byte, from a producer that skips the API.
    produce(
        settings,
        [
            (b"direct", order_json(f"direct-{n}", uid))
            for n, (uid, _) in enumerate(HOSTILE_IDS.values())
        ],
    )

    for query in start_queries(spark, settings, available_now=True):
        query.awaitTermination()
        assert query.exception() is None
    lake = {row["OrderId"]: row for row in arrow_orders(settings)}
    quarantined = [
        row["raw_value"] for row in arrow_rows(settings, settings.purchases_quarantine_url)
    ]

    verdicts = {}
    for n, case in enumerate(HOSTILE_IDS):
        in_quarantine = sum(f'"direct-{n}"' in raw for raw in quarantined)
        assert (f"direct-{n}" in lake) + in_quarantine == 1, case
        verdicts[case] = {"API accepts": api_accepted[n], "lake accepts": f"direct-{n}" in lake}
    assert verdicts == {
        case: {"API accepts": accepted, "lake accepts": accepted}
        for case, (_, accepted) in HOSTILE_IDS.items()
    }
    for n, (user_id, accepted) in enumerate(HOSTILE_IDS.values()):
        if accepted:  # stored alike, in NFC, whichever way it came in
            nfc = unicodedata.normalize("NFC", user_id)
            assert lake[f"direct-{n}"]["UserId"] == lake[f"api-{n}"]["UserId"] == nfc


def event(user_id: str, **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(EVENT_EXAMPLE), "UserId": user_id, **changes}


def test_an_event_is_one_event_however_spelled_and_one_per_idempotency_key(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    price = copy.deepcopy(EVENT_EXAMPLE["Attributes"])
    sends: list[tuple[dict[str, Any], str | None]] = [
        # One name in NFC and in NFD: one event.
        (event(NFC_NAME), None),
        (event(NFD_NAME), None),
        # 0.0 and -0.0: one event.
        (event("zero", Attributes={**price, "Discount": 0.0}), None),
        (event("zero", Attributes={**price, "Discount": -0.0}), None),
        # Two real events, identical, within one second: two keys, two events.
        (event("twice"), "basket-1"),
        (event("twice"), "basket-2"),
        # One key sent twice, the second time with another body: one event, the first.
        (event("keyed", SessionId="first"), "basket-3"),
        (event("keyed", SessionId="changed"), "basket-3"),
    ]
    with TestClient(create_app(settings)) as client:
        for body, key in sends:
            headers = {"Content-Type": "application/json"}
            if key is not None:
                headers["Idempotency-Key"] = key
            response = client.put("/SendEvent", content=json.dumps(body), headers=headers)
            assert response.status_code == 200, response.text

    drained = drain_user_events(settings)
    refresh_event_counts(settings)
    assert (drained.stored, drained.duplicates) == (5, 3)
    store = event_store(settings)
    name = EVENT_EXAMPLE["EventName"]
    counts = {(d["UserId"], d["EventName"]): d["EventCount"] for d in store.counts.find()}
    assert counts == {
        (NFC_NAME, name): 1,
        ("zero", name): 1,
        ("twice", name): 2,
        ("keyed", name): 1,
    }
    [keyed] = store.events.find({"UserId": "keyed"})
    assert (keyed["SessionId"], keyed["IdempotencyKey"]) == ("first", "basket-3")
    [zero] = store.events.find({"UserId": "zero"})
    assert str(zero["Attributes"]["Discount"]) == "0.0"
