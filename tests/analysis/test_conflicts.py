"""`task status`'s conflict check (pyarrow, no Spark) agrees with the notebook's definition."""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql.pandas.types import to_arrow_schema

from app.analysis.conflicts import conflicting_orders
from app.lake.schema import PURCHASE_ROW
from tests.analysis.dataset import lake_rows


def table(rows: list[dict[str, object]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=to_arrow_schema(PURCHASE_ROW))


def test_re_deliveries_are_not_conflicts() -> None:
    rows = lake_rows()
    assert len({row["OrderId"] for row in rows}) < len(rows)  # the known lake re-delivers
    assert conflicting_orders(table(rows)) == {}


def test_the_same_order_id_with_other_content_is_a_conflict() -> None:
    rows = lake_rows()
    alice = next(row for row in rows if row["OrderId"] == "O-alice-1")
    other_lines = [{**alice["Products"][0], "ItemCount": alice["Products"][0]["ItemCount"] + 1}]
    changed = [
        {**alice, "PaymentType": "PayPal", "kafka_offset": 990},
        {**alice, "Products": other_lines, "kafka_offset": 991},
    ]
    assert conflicting_orders(table([*rows, *changed])) == {"O-alice-1": 3}
