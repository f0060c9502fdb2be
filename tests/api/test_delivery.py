"""A 200 means the records are in Kafka: right topic, exact canonical value, `UserId` as key."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Callable

from confluent_kafka import Message, murmur2
from fastapi.testclient import TestClient

from app.api.routes import EVENT_EXAMPLE, PURCHASE_EXAMPLE
from app.core.config import Settings
from app.schemas import Purchase, UserEvent

ReadTopic = Callable[[Settings, str], list[Message]]


def test_an_event_is_stored_in_user_events_exactly(
    client: TestClient, api_settings: Settings, read_topic: ReadTopic
) -> None:
    sent = {
        **copy.deepcopy(EVENT_EXAMPLE),
        "UserId": "exact-1",
        "TimeStamp": "2026-11-27T13:15:00.5+03:00",
    }
    response = client.put("/SendEvent", json=sent)
    assert response.status_code == 200, response.text
    assert response.json() == {"topic": api_settings.topic_user_events, "records": 1}

    [stored] = [
        m for m in read_topic(api_settings, api_settings.topic_user_events) if m.key() == b"exact-1"
    ]
    assert stored.value() == UserEvent.model_validate(sent).to_json_bytes()
    # The canonical form: same fields, time converted to UTC with microseconds.
    assert json.loads(stored.value()) == {**sent, "TimeStamp": "2026-11-27T10:15:00.500000Z"}
    assert not [
        m
        for m in read_topic(api_settings, api_settings.topic_purchased_item)
        if m.key() == b"exact-1"
    ]


def test_a_full_batch_arrives_whole_in_purchased_item(
    client: TestClient, api_settings: Settings, read_topic: ReadTopic
) -> None:
    batch = [
        {**copy.deepcopy(PURCHASE_EXAMPLE), "OrderId": f"whole-{i}", "UserId": f"buyer-{i % 37}"}
        for i in range(api_settings.api_max_batch)
    ]
    response = client.post("/PurchasedItems", json=batch)
    assert response.status_code == 200, response.text
    assert response.json() == {"topic": api_settings.topic_purchased_item, "records": len(batch)}

    stored = [
        m
        for m in read_topic(api_settings, api_settings.topic_purchased_item)
        if json.loads(m.value())["OrderId"].startswith("whole-")
    ]
    expected = {
        order["OrderId"]: (order["UserId"].encode(), Purchase.model_validate(order).to_json_bytes())
        for order in batch
    }
    assert {json.loads(m.value())["OrderId"]: (m.key(), m.value()) for m in stored} == expected
    assert len(stored) == len(batch)  # one record per order, none twice

    # Per-user order: one partition per user (Java clients' murmur2), in the request's order.
    orders_of: dict[bytes, list[str]] = defaultdict(list)
    for message in sorted(stored, key=lambda m: (m.partition(), m.offset())):
        assert message.partition() == murmur2(message.key(), api_settings.kafka_partitions)
        orders_of[message.key()].append(json.loads(message.value())["OrderId"])
    for user, order_ids in orders_of.items():
        assert order_ids == [o["OrderId"] for o in batch if o["UserId"].encode() == user]
    assert len({m.partition() for m in stored}) == api_settings.kafka_partitions


def test_metrics_count_requests_and_records(client: TestClient, api_settings: Settings) -> None:
    assert client.put("/SendEvent", json=EVENT_EXAMPLE).status_code == 200
    text = client.get("/metrics").text
    assert f'api_records_produced_total{{topic="{api_settings.topic_user_events}"}}' in text
    assert 'api_requests_total{method="PUT",route="/SendEvent",status="200"}' in text
    assert 'api_request_duration_seconds_bucket{le="0.025",route="/SendEvent"}' in text
    assert "api_event_loop_lag_seconds_count" in text
