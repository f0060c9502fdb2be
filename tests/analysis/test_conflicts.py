"""`task status`'s conflict check (pyarrow, no Spark) and the definition of one order's versions."""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql.pandas.types import to_arrow_schema

from app.analysis.conflicts import Conflict, KafkaPosition, canonical_content, conflicting_orders
from app.lake.schema import PURCHASE_ROW
from tests.analysis.dataset import lake_rows, retried_rows


def table(rows: list[dict[str, object]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=to_arrow_schema(PURCHASE_ROW))


def test_re_deliveries_are_not_conflicts() -> None:
    rows = lake_rows()
    assert len({row["OrderId"] for row in rows}) < len(rows)  # the known lake re-delivers
    assert conflicting_orders(table(rows)) == {}


def test_lines_in_another_order_and_a_negative_zero_are_the_same_content() -> None:
    bob = next(row for row in lake_rows() if row["OrderId"] == "O-bob-1")
    lines = bob["Products"]
    assert len(lines) == 2
    retried = {**bob, "Products": [lines[1], {**lines[0], "ItemDiscount": -0.0}]}
    assert lines[0]["ItemDiscount"] == 0.0
    assert canonical_content(retried) == canonical_content(bob)
    dearer = {**bob, "Products": [{**lines[0], "ItemPrice": lines[0]["ItemPrice"] + 1}, lines[1]]}
    assert canonical_content(dearer) != canonical_content(bob)


def test_the_version_that_first_arrived_last_is_counted() -> None:
    """Bob's reordered retry is no conflict; alice's dearer order is, and it is counted even
    though her old version was re-delivered after it."""
    rows = retried_rows()
    dearer = next(row for row in rows if row["kafka_offset"] == 501)
    counted = KafkaPosition(dearer["kafka_timestamp"], dearer["kafka_partition"], 501)
    assert conflicting_orders(table(rows)) == {"O-alice-1": Conflict(2, counted)}


def test_each_differing_field_makes_a_version() -> None:
    rows = lake_rows()
    alice = next(row for row in rows if row["OrderId"] == "O-alice-1")
    other_lines = [{**alice["Products"][0], "ItemCount": alice["Products"][0]["ItemCount"] + 1}]
    changed = [
        {**alice, "PaymentType": "PayPal", "kafka_offset": 990},
        {**alice, "Products": other_lines, "kafka_offset": 991},
    ]
    (conflict,) = conflicting_orders(table([*rows, *changed])).values()
    assert conflict.versions == 3
    # Same Kafka timestamp and partition: the offset decides.
    assert conflict.counted.offset == 991
