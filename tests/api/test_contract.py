"""What the API accepts and how it refuses: every field and every class of bad input.

Runs against the real producer and Kafka (isolated topics); limits are lowered for this module
(5 orders per request, 4 KiB per body) so the 413 cases stay small.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Message
from fastapi.testclient import TestClient

from app.api.ingest import RecordParser
from app.api.main import create_app
from app.api.routes import EVENT_EXAMPLE, PURCHASE_EXAMPLE
from app.core.config import Settings

MAX_BATCH = 5
MAX_BODY = 4096
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def api_settings(isolated_settings: Settings) -> Settings:
    return isolated_settings.model_copy(
        update={"api_max_batch": MAX_BATCH, "api_max_body_bytes": MAX_BODY}
    )


def event(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(EVENT_EXAMPLE), **changes}


def attributes(**changes: Any) -> dict[str, Any]:
    return event(Attributes={**copy.deepcopy(EVENT_EXAMPLE["Attributes"]), **changes})


def without(record: dict[str, Any], *path: str) -> dict[str, Any]:
    record = copy.deepcopy(record)
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return record


def order(order_id: str = "order-0", **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(PURCHASE_EXAMPLE), "OrderId": order_id, **changes}


def first_line(**changes: Any) -> dict[str, Any]:
    record = order()
    record["Products"][0].update(changes)
    return record


EVENT_CASES = [
    ("missing UserId", without(event(), "UserId"), "UserId", "missing"),
    ("UserId not a string", event(UserId=42), "UserId", "string_type"),
    ("UserId empty", event(UserId=""), "UserId", "string_too_short"),
    ("UserId with a tab", event(UserId="ay\tse"), "UserId", "value_error"),
    ("UserId with a zero-width space", event(UserId="ay\u200bse"), "UserId", "value_error"),
    ("UserId too long", event(UserId="u" * 65), "UserId", "string_too_long"),
    # 30 characters as sent, 90 in NFC (U+FB2C has no composed form): what is stored is too long.
    ("UserId too long once in NFC", event(UserId="\ufb2c" * 30), "UserId", "value_error"),
    ("UserId ending in a line break", event(UserId="ayse\n"), "UserId", "value_error"),
    ("UserId ending in U+2028", event(UserId="ayse\u2028"), "UserId", "value_error"),
    ("missing SessionId", without(event(), "SessionId"), "SessionId", "missing"),
    ("unknown EventName", event(EventName="Clicked"), "EventName", "enum"),
    ("EventName in other case", event(EventName="pagevisited"), "EventName", "enum"),
    ("missing TimeStamp", without(event(), "TimeStamp"), "TimeStamp", "missing"),
    ("TimeStamp without zone", event(TimeStamp="2026-11-27T10:15:00"), "TimeStamp", "value_error"),
    (
        "TimeStamp not a time",
        event(TimeStamp="yesterday"),
        "TimeStamp",
        "datetime_from_date_parsing",
    ),
    ("TimeStamp as Unix time", event(TimeStamp=1764238500), "TimeStamp", "value_error"),
    ("TimeStamp as a string of digits", event(TimeStamp="0"), "TimeStamp", "value_error"),
    (
        "TimeStamp before year 1 in UTC",
        event(TimeStamp="0001-01-01T00:00:00+03:00"),
        "TimeStamp",
        "value_error",
    ),
    ("missing Attributes", without(event(), "Attributes"), "Attributes", "missing"),
    ("Attributes not an object", event(Attributes=[1, 2]), "Attributes", "model_type"),
    (
        "missing ProductId",
        without(event(), "Attributes", "ProductId"),
        "Attributes.ProductId",
        "missing",
    ),
    ("negative Price", attributes(Price=-0.01), "Attributes.Price", "greater_than_equal"),
    ("Price as a string", attributes(Price="10"), "Attributes.Price", "float_type"),
    ("Price absurdly high", attributes(Price=1e12), "Attributes.Price", "less_than_equal"),
    ("Discount above 1", attributes(Discount=1.5), "Attributes.Discount", "less_than_equal"),
    ("negative Discount", attributes(Discount=-0.1), "Attributes.Discount", "greater_than_equal"),
    ("unknown field", event(Referrer="x"), "Referrer", "extra_forbidden"),
    ("unknown attribute", attributes(Colour="red"), "Attributes.Colour", "extra_forbidden"),
    ("an array instead of one object", [event()], "(body)", "model_type"),
    ("null body", None, "(body)", "model_type"),
]

ORDER_CASES = [
    ("empty array", [], "(body)", "too_short"),
    ("one object instead of an array", order(), "(body)", "list_type"),
    (
        "ItemCount zero",
        [first_line(ItemCount=0)],
        "[0].Products[0].ItemCount",
        "greater_than_equal",
    ),
    (
        "negative ItemCount",
        [first_line(ItemCount=-2)],
        "[0].Products[0].ItemCount",
        "greater_than_equal",
    ),
    ("fractional ItemCount", [first_line(ItemCount=1.5)], "[0].Products[0].ItemCount", "int_type"),
    (
        "negative ItemPrice",
        [first_line(ItemPrice=-1.0)],
        "[0].Products[0].ItemPrice",
        "greater_than_equal",
    ),
    (
        "ItemDiscount above 1",
        [first_line(ItemDiscount=2)],
        "[0].Products[0].ItemDiscount",
        "less_than_equal",
    ),
    ("no Products", [order(Products=[])], "[0].Products", "too_short"),
    ("missing Products", [without(order(), "Products")], "[0].Products", "missing"),
    ("TotalPrice disagrees with lines", [order(TotalPrice=500.0)], "[0]", "value_error"),
    ("negative TotalPrice", [order(TotalPrice=-1.0)], "[0].TotalPrice", "greater_than_equal"),
    ("unknown PaymentType", [order(PaymentType="Bitcoin")], "[0].PaymentType", "enum"),
    ("missing OrderId", [without(order(), "OrderId")], "[0].OrderId", "missing"),
    (
        "TimeStamp without zone",
        [order(TimeStamp="2026-11-27 10:17")],
        "[0].TimeStamp",
        "value_error",
    ),
    ("second order bad", [order("a"), order("b", PaymentType="Cash")], "[1].PaymentType", "enum"),
    (
        "duplicate OrderId",
        [order("a"), order("b"), order("a")],
        "[2].OrderId",
        "duplicate_order_id",
    ),
]


def _assert_refused(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.mark.parametrize(
    ("body", "field", "kind"), [case[1:] for case in EVENT_CASES], ids=[c[0] for c in EVENT_CASES]
)
def test_send_event_refuses_naming_the_field(
    client: TestClient, body: Any, field: str, kind: str
) -> None:
    refused = _assert_refused(client.put("/SendEvent", content=json.dumps(body), headers=JSON), 422)
    assert {"field": field, "type": kind} in [
        {"field": e["field"], "type": e["type"]} for e in refused["errors"]
    ], refused
    assert field in refused["detail"] or len(refused["errors"]) > 1


@pytest.mark.parametrize(
    ("body", "field", "kind"), [case[1:] for case in ORDER_CASES], ids=[c[0] for c in ORDER_CASES]
)
def test_purchased_items_refuses_naming_the_field(
    client: TestClient, body: Any, field: str, kind: str
) -> None:
    refused = _assert_refused(
        client.post("/PurchasedItems", content=json.dumps(body), headers=JSON), 422
    )
    assert {"field": field, "type": kind} in [
        {"field": e["field"], "type": e["type"]} for e in refused["errors"]
    ], refused


def test_total_price_mismatch_says_why(client: TestClient) -> None:
    refused = _assert_refused(client.post("/PurchasedItems", json=[order(TotalPrice=1.0)]), 422)
    assert "TotalPrice 1.0 does not match" in refused["errors"][0]["reason"]


def test_a_refused_batch_stores_nothing(
    client: TestClient,
    api_settings: Settings,
    read_topic: Callable[[Settings, str], list[Message]],
) -> None:
    batch = [order("all-or-nothing-1"), order("all-or-nothing-2", TotalPrice=-5.0)]
    _assert_refused(client.post("/PurchasedItems", json=batch), 422)
    stored = read_topic(api_settings, api_settings.topic_purchased_item)
    assert not [m for m in stored if b"all-or-nothing" in m.value()]


@pytest.mark.parametrize("path", ["/SendEvent", "/PurchasedItems"])
@pytest.mark.parametrize("body", [b"{", b'{"UserId": }', b"[1, 2", b"\xff\xfe", b""])
def test_malformed_json_is_a_400(client: TestClient, path: str, body: bytes) -> None:
    method = "PUT" if path == "/SendEvent" else "POST"
    response = client.request(method, path, content=body, headers=JSON)
    assert "not valid JSON" in _assert_refused(response, 400)["detail"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
def test_other_content_types_are_a_415(client: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.put("/SendEvent", content=json.dumps(event()), headers=headers)
    assert "Content-Type must be application/json" in _assert_refused(response, 415)["detail"]


def test_json_with_a_charset_is_accepted(client: TestClient) -> None:
    response = client.put(
        "/SendEvent",
        content=json.dumps(event()),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200, response.text


def test_more_orders_than_the_batch_limit_is_a_413(client: TestClient) -> None:
    batch = [order(f"big-{i}") for i in range(MAX_BATCH + 1)]
    refused = _assert_refused(client.post("/PurchasedItems", json=batch), 413)
    assert f"at most {MAX_BATCH}" in refused["detail"]
    # Too many is said first, even when the orders are also invalid.
    bad = [order(f"bad-{i}", TotalPrice=-1.0) for i in range(MAX_BATCH + 1)]
    _assert_refused(client.post("/PurchasedItems", json=bad), 413)


def test_a_body_over_the_size_limit_is_a_413(client: TestClient) -> None:
    body = json.dumps(event(UserId="u", SessionId="s" * 60, Padding="x" * MAX_BODY)).encode()
    response = client.put("/SendEvent", content=body, headers=JSON)
    assert "larger than 4096 bytes" in _assert_refused(response, 413)["detail"]


def test_a_streamed_body_without_length_is_counted_too(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length header
        for _ in range(MAX_BODY // 512 + 2):
            yield b" " * 512

    response = client.put("/SendEvent", content=chunks(), headers=JSON)
    _assert_refused(response, 413)


def test_documented_examples_are_accepted(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path, method in (("/SendEvent", "put"), ("/PurchasedItems", "post")):
        content = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        for example in content["examples"].values():
            response = client.request(method, path, json=example["value"])
            assert response.status_code == 200, response.text


def test_whole_numbers_are_accepted_as_prices(client: TestClient, api_settings: Settings) -> None:
    response = client.put("/SendEvent", json=attributes(Price=100, Discount=0))
    assert response.status_code == 200, response.text
    assert response.json() == {"topic": api_settings.topic_user_events, "records": 1}


def test_unknown_paths_and_methods_answer_json(client: TestClient) -> None:
    assert client.get("/SendEvent").status_code == 405
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}


def test_an_unexpected_failure_is_a_json_500_not_a_traceback(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net for bugs: a clear JSON answer (and a log line), never a bare traceback."""

    def broken(_parser: RecordParser, _body: bytes) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(RecordParser, "event", broken)
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as broken_client:
        response = broken_client.put("/SendEvent", json=event())
    assert response.status_code == 500
    assert "failed unexpectedly (RuntimeError); this is a bug" in response.json()["detail"]


def test_ids_are_stored_in_nfc_and_the_idempotency_key_travels_to_kafka(
    client: TestClient,
    api_settings: Settings,
    read_topic: Callable[[Settings, str], list[Message]],
) -> None:
    nfd = unicodedata.normalize("NFD", "Çağrı Öztürk \U0001fae0")  # U+1FAE0: Unicode 14
    sent = event(UserId=nfd, SessionId="idempotency-test")
    response = client.put("/SendEvent", json=sent, headers={"Idempotency-Key": "order 7, try 1"})
    assert response.status_code == 200, response.text
    [stored] = [
        m
        for m in read_topic(api_settings, api_settings.topic_user_events)
        if b"idempotency-test" in m.value()
    ]
    assert (
        stored.key().decode() == json.loads(stored.value())["UserId"] == "Çağrı Öztürk \U0001fae0"
    )
    assert stored.headers() == [("Idempotency-Key", b"order 7, try 1")]


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"Idempotency-Key": ""}, "must be 1 to 255 characters long, not 0"),
        ({"Idempotency-Key": "k" * 256}, "must be 1 to 255 characters long, not 256"),
        ({"Idempotency-Key": "clé".encode()}, "must hold printable ASCII characters only"),
        ([("Idempotency-Key", "a"), ("Idempotency-Key", "b")], "was sent 2 times"),
    ],
    ids=["empty", "too long", "not ASCII", "twice"],
)
def test_an_invalid_idempotency_key_is_a_400_naming_the_header(
    client: TestClient, headers: Any, problem: str
) -> None:
    response = client.put("/SendEvent", json=event(), headers=headers)
    detail = _assert_refused(response, 400)["detail"]
    assert f"The Idempotency-Key header {problem}" in detail, detail
