"""Parsing and validation of PurchasedItem messages, on a static DataFrame (no Kafka, no S3).

The stream runs exactly these functions on each micro-batch, so what holds here holds in the
lake: a valid order comes out field for field as sent, and every kind of poison message comes
out as a quarantine row with its raw value and a reason a person can act on.
"""

from __future__ import annotations

import base64
import json
import math
import unicodedata
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Any

import annotated_types
import pytest
from pydantic import Field
from pyspark.sql import SparkSession

from app.lake.parse import parse_purchases, quarantined_purchases, valid_purchases
from app.lake.rules import PURCHASE_RULES, record_rules
from app.lake.schema import PURCHASE_ROW, QUARANTINE_ROW
from app.schemas import Purchase, PurchasedProduct, Record, canonical_wire
from tests.lake.helpers import make_orders, spark_orders

KAFKA_TIME = datetime(2026, 11, 27, 23, 59, 59, 999_000, tzinfo=UTC)
ORDER = make_orders(1)[0]
WIRE = ORDER.to_wire()


def _variant(**changes: Any) -> bytes:
    data = json.loads(json.dumps(WIRE))
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


SAME_ORDER_AT_PLUS_3 = _variant(
    TimeStamp=ORDER.timestamp.astimezone(timezone(timedelta(hours=3))).isoformat()
)


def _product(**changes: Any) -> bytes:
    return _variant(Products=[{**WIRE["Products"][0], **changes}])


# message value -> a fragment the reason must contain
POISON: dict[str, tuple[bytes | None, str]] = {
    "not JSON": (b"this is not json", "not a JSON object"),
    "a JSON array": (b"[1, 2]", "not a JSON object"),
    "NaN is not JSON": (_variant(TotalPrice=float("nan")), "not a JSON object"),
    "tombstone": (None, "empty message value (tombstone)"),
    "not UTF-8": (b"\xff\xfe{", "not UTF-8 text"),
    "missing UserId": (_variant(UserId=...), "UserId is missing or null"),
    "null TimeStamp": (_variant(TimeStamp=None), "TimeStamp is missing or null"),
    "string TotalPrice": (_variant(TotalPrice="12.5"), "TotalPrice is missing or null"),
    "empty Products": (_variant(Products=[]), "Products must have at least 1 item(s)"),
    "ItemCount 0": (_product(ItemCount=0), "Products[].ItemCount must be >= 1"),
    "fractional ItemCount": (_product(ItemCount=1.5), "wrong JSON type"),
    "ItemDiscount above 1": (_product(ItemDiscount=1.5), "Products[].ItemDiscount must be <= 1"),
    "null product line": (_variant(Products=[None]), "Products[].ProductId is missing or null"),
    "unknown PaymentType": (_variant(PaymentType="Bitcoin"), "PaymentType must be one of"),
    "OrderId with a tab": (_variant(OrderId="O\t1"), "OrderId must be printable text"),
    "UserId with a leading space": (_variant(UserId=" U1"), "UserId must be printable text"),
    "UserId too long": (_variant(UserId="U" * 65), "UserId must have at most 64 character(s)"),
    # 30 characters as sent, 90 in NFC (U+FB2C has no composed form): too long for the API too.
    "UserId too long once in NFC": (_variant(UserId="\ufb2c" * 30), "once in Unicode NFC"),
    # Java's `$` would accept a line terminator at the end: the rule ends with \z.
    "UserId ending in a line break": (_variant(UserId="U1\n"), "UserId must be printable text"),
    "UserId ending in U+2028": (_variant(UserId="U1\u2028"), "UserId must be printable text"),
    # Spark reads a number, a boolean or an object where text belongs as its JSON text.
    "UserId a number": (_variant(UserId=123), "UserId must be a string"),
    "ProductId a boolean": (_product(ProductId=True), "Products[].ProductId must be a string"),
    "OrderId an object": (_variant(OrderId={"id": 1}), "OrderId must be a string"),
    # Spark reads a lone surrogate as "?"; the API answers 400 (not valid JSON).
    "a lone surrogate escape": (_variant(UserId="U\ud800"), "lone UTF-16 surrogate"),
    "unknown field": (_variant(Coupon="FREE"), "unknown field(s): Coupon"),
    "TimeStamp without a zone": (
        _variant(TimeStamp="2026-11-27T10:15:00"),
        "TimeStamp must be an ISO 8601 date-time with a zone",
    ),
    "TimeStamp as Unix time": (_variant(TimeStamp=1795823296), "TimeStamp must be an ISO 8601"),
    "TimeStamp not a date": (_variant(TimeStamp="2026-02-30T10:15:00Z"), "TimeStamp must be"),
}


@pytest.fixture(scope="module")
def parsed(spark: SparkSession) -> dict[str, Any]:
    """Every case parsed in one Spark job: offset i is case i; offsets 0 and 1 are valid."""
    cases = [("valid", ORDER.to_json_bytes()), ("valid, other zone", SAME_ORDER_AT_PLUS_3)]
    cases += [(name, value) for name, (value, _) in POISON.items()]
    frame = spark.createDataFrame(
        [(value, 2, offset, KAFKA_TIME) for offset, (_, value) in enumerate(cases)],
        "value binary, partition int, offset long, timestamp timestamp",
    )
    result = parse_purchases(frame).cache()
    valid = {row["kafka_offset"]: row for row in valid_purchases(result).collect()}
    quarantined = {row["kafka_offset"]: row for row in quarantined_purchases(result).collect()}
    return {
        "names": [name for name, _ in cases],
        "valid": valid,
        "valid_orders": spark_orders(valid_purchases(result)),
        "quarantined": quarantined,
        "columns": (valid_purchases(result).columns, quarantined_purchases(result).columns),
    }


def test_a_valid_order_comes_out_field_for_field(parsed: dict[str, Any]) -> None:
    assert sorted(parsed["valid"]) == [0, 1]
    # The same instant written with another zone is the same order, stored in UTC.
    assert parsed["valid_orders"] == [WIRE, WIRE]
    row = parsed["valid"][0]
    assert (row["kafka_partition"], row["kafka_offset"]) == (2, 0)
    # The partition is the UTC date of the Kafka timestamp, not the order's TimeStamp.
    assert row["ingest_date"] == date(2026, 11, 27)


def test_rows_have_the_lake_layout(parsed: dict[str, Any]) -> None:
    valid_columns, quarantine_columns = parsed["columns"]
    assert valid_columns == PURCHASE_ROW.fieldNames()
    assert quarantine_columns == QUARANTINE_ROW.fieldNames()


@pytest.mark.parametrize("case", list(POISON))
def test_a_poison_message_is_kept_with_its_reason(parsed: dict[str, Any], case: str) -> None:
    offset = parsed["names"].index(case)
    value, reason = POISON[case]
    assert offset not in parsed["valid"]
    row = parsed["quarantined"][offset]
    assert reason in row["error"], row["error"]
    if value is None:
        assert row["raw_value"] is None
    elif case == "not UTF-8":
        assert base64.b64decode(row["raw_value"]) == value
    else:
        assert row["raw_value"] == value.decode()


def test_every_field_of_the_models_has_a_required_rule() -> None:
    reasons = {reason for _, reason in PURCHASE_RULES.rules()}
    for prefix, model in (("", Purchase), ("Products[].", PurchasedProduct)):
        for field in model.model_fields.values():
            assert f"{prefix}{field.alias} is missing or null" in reasons


def test_a_constraint_without_a_spark_rule_is_refused() -> None:
    class Odd(Record):
        count: Annotated[int, annotated_types.MultipleOf(2)] = Field(alias="Count")

    with pytest.raises(TypeError, match="no Spark rule"):
        record_rules(Odd)


def test_a_valid_order_is_stored_in_the_canonical_form_the_api_gives_it(
    spark: SparkSession,
) -> None:
    """NFD ids come out in NFC, -0.0 as 0.0, an emoji of Unicode 14 (U+1FAE0, which Java 17
    does not know) and a surrogate pair escape are accepted: the lake row is the API's record."""
    line = {
        **WIRE["Products"][0],
        "ProductId": unicodedata.normalize("NFD", "çay-ürün"),
        "ItemDiscount": -0.0,
    }
    sent = _variant(
        UserId=unicodedata.normalize("NFD", "Çağrı Öztürk"), OrderId="\U0001fae0 1", Products=[line]
    )
    assert b"\\ud83e\\udee0" in sent  # json.dumps escapes it as a surrogate pair
    frame = spark.createDataFrame(
        [(sent, 0, 0, KAFKA_TIME)], "value binary, partition int, offset long, timestamp timestamp"
    )
    [row] = spark_orders(valid_purchases(parse_purchases(frame)))
    assert row == canonical_wire(Purchase.model_validate_json(sent))
    assert (row["UserId"], row["Products"][0]["ProductId"]) == ("Çağrı Öztürk", "çay-ürün")
    assert math.copysign(1, row["Products"][0]["ItemDiscount"]) == 1
