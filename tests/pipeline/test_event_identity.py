"""An event's identity in the drain, in memory: its canonical content, or the client's key."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from app.api.routes import EVENT_EXAMPLE
from app.pipeline.documents import event_id, prepare_batch
from app.schemas import UserEvent

KAFKA_TIME = 1795822621496  # ms since the epoch


def record(offset: int, body: dict[str, Any], headers: list[tuple[str, bytes]]) -> ConsumerRecord:
    value = json.dumps(body).encode()
    return ConsumerRecord(
        "UserEvents", 0, -1, offset, KAFKA_TIME, 0, None, value, headers, None, -1, -1, -1
    )


def event(**changes: Any) -> UserEvent:
    return UserEvent.model_validate({**EVENT_EXAMPLE, **changes})


def test_one_event_however_it_is_spelled() -> None:
    nfd = unicodedata.normalize("NFD", "Çağrı")
    assert event_id(event(UserId="Çağrı")) == event_id(event(UserId=nfd))
    zero = {**EVENT_EXAMPLE["Attributes"], "Discount": 0.0}
    minus_zero = {**zero, "Discount": -0.0}
    assert event_id(event(Attributes=zero)) == event_id(event(Attributes=minus_zero))
    assert event_id(event(TimeStamp="2026-11-27T13:15:00+03:00")) == event_id(
        event(TimeStamp="2026-11-27T10:15:00Z")
    )


def test_a_key_is_the_identity_when_given() -> None:
    same = event()
    assert event_id(same, "k-1") != event_id(same, "k-2")
    assert event_id(same, "k-1") == event_id(event(SessionId="another"), "k-1")
    assert event_id(same, "k-1") != event_id(same)


def test_the_key_of_a_message_names_its_event() -> None:
    batch = prepare_batch([record(5, EVENT_EXAMPLE, [("Idempotency-Key", b"k-1")])], None)
    [document] = batch.events
    assert document["_id"] == event_id(event(), "k-1")
    assert document["IdempotencyKey"] == "k-1"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([("Idempotency-Key", b"")], "Idempotency-Key header must be 1 to 255 characters long"),
        ([("Idempotency-Key", "clé".encode())], "Idempotency-Key header must hold printable"),
        ([("Idempotency-Key", b"a"), ("Idempotency-Key", b"b")], "2 of them, at most one"),
    ],
    ids=["empty", "not ASCII", "twice"],
)
def test_a_message_with_an_invalid_key_is_quarantined(
    headers: list[tuple[str, bytes]], reason: str
) -> None:
    batch = prepare_batch([record(5, EVENT_EXAMPLE, headers)], None)
    assert not batch.events
    [quarantined] = batch.quarantine
    assert reason in quarantined["Reason"], quarantined["Reason"]
