"""A small lake whose answers are known in advance, and an independent pandas computation of them.

Every trap the analyses must not fall into is in it, next to the answer it must give:

- alice buys 3 units of P-01 in one order: one purchase, not a repeat;
- bob buys P-02 in two orders (one 5 hours ago): a repeat, order_count 2, total_quantity 5;
- carol has P-03 on two lines of one order and once in another: order_count 2, not 3;
- dave's only order is delivered twice (the copy a day later, in the next `ingest_date`
  partition): counted once everywhere, and no repeat;
- ivan's order is written twice with the same Kafka offset (a re-run batch): counted once;
- erin ordered 59 and 61 minutes before "now", the older order worth more: only the 59-minute one
  is in the last hour; her P-05 in both orders is a repeat;
- frank's only order is exactly 1 hour old (excluded), gina's is exactly "now" (included), hank's
  is 1 minute in the future (excluded);
- 12 customers ordered in the last hour; the 10th and 11th tie on value (u-tie-a before u-tie-b);
  jack has two orders of equal value in the hour (the later one is shown);
- P-03, P-07 and P-08 tie on units sold, and so do the 8th to 11th products (P-13 is left out);
  counting dave's copy would lift P-04 out of that tie.

`retried_rows` adds what senders do to an `OrderId` after the fact (`RETRIED`): bob's first order
sent again with its lines in the other order and a -0.0 discount (the same order), and alice's
order sent again at a higher price (a conflict: the later version counts), then her first version
re-delivered once more (a re-delivery: it does not bring the old price back).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql.pandas.types import to_arrow_schema

from app.lake.schema import PARTITION_COLUMN, PURCHASE_ROW
from app.schemas import PaymentType, Purchase, PurchasedProduct, order_total

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Line = tuple[str, int, float, float]


def _order(
    order_id: str, user: str, before: timedelta, payment: PaymentType, lines: list[Line]
) -> Purchase:
    products = [
        PurchasedProduct(product_id=p, item_count=n, item_price=price, item_discount=discount)
        for p, n, price, discount in lines
    ]
    return Purchase(
        session_id=f"S-{order_id}",
        timestamp=NOW - before,
        user_id=user,
        total_price=order_total(products),
        order_id=order_id,
        products=products,
        payment_type=payment,
    )


def _minutes(m: float) -> timedelta:
    return timedelta(minutes=m)


CARD, DEBIT, PAYPAL, BANK = (
    PaymentType.CREDIT_CARD,
    PaymentType.DEBIT_CARD,
    PaymentType.PAYPAL,
    PaymentType.BANK_TRANSFER,
)

ORDERS: list[Purchase] = [
    _order("O-alice-1", "alice", _minutes(10), CARD, [("P-01", 3, 20.0, 0.0)]),
    _order("O-bob-1", "bob", _minutes(30), CARD, [("P-02", 1, 45.0, 0.0), ("P-03", 2, 5.0, 0.1)]),
    _order("O-bob-2", "bob", timedelta(hours=5), DEBIT, [("P-02", 4, 15.0, 0.2)]),
    _order(
        "O-carol-1", "carol", _minutes(20), PAYPAL, [("P-03", 1, 5.0, 0.0), ("P-03", 2, 5.0, 0)]
    ),
    _order("O-carol-2", "carol", timedelta(days=2), PAYPAL, [("P-03", 1, 5.0, 0.0)]),
    _order("O-dave-1", "dave", _minutes(15), CARD, [("P-04", 2, 300.0, 0.0)]),
    _order("O-ivan-1", "ivan", _minutes(25), BANK, [("P-06", 1, 99.0, 0.0)]),
    _order("O-erin-59", "erin", _minutes(59), CARD, [("P-05", 1, 100.0, 0.0)]),
    _order("O-erin-61", "erin", _minutes(61), CARD, [("P-05", 9, 100.0, 0.0)]),
    _order("O-frank-60", "frank", _minutes(60), CARD, [("P-09", 1, 5000.0, 0.0)]),
    _order("O-gina-0", "gina", _minutes(0), DEBIT, [("P-09", 1, 50.0, 0.0)]),
    _order("O-hank-future", "hank", _minutes(-1), CARD, [("P-09", 1, 9000.0, 0.0)]),
    _order("O-jack-1", "jack", _minutes(40), DEBIT, [("P-10", 2, 70.0, 0.0)]),
    _order("O-jack-2", "jack", _minutes(35), DEBIT, [("P-11", 1, 140.0, 0.0)]),
    _order("O-tie-a", "u-tie-a", _minutes(45), PAYPAL, [("P-12", 1, 30.0, 0.0)]),
    _order("O-tie-b", "u-tie-b", _minutes(44), PAYPAL, [("P-12", 1, 30.0, 0.0)]),
    _order("O-kim-1", "kim", _minutes(50), CARD, [("P-07", 6, 20.0, 0.5)]),
    _order("O-lee-1", "lee", timedelta(hours=3), DEBIT, [("P-08", 4, 40.0, 0.0)]),
    _order("O-lee-2", "lee", _minutes(55), CARD, [("P-08", 2, 40.0, 0.25), ("P-13", 2, 1.0, 0)]),
]

# (OrderId, Kafka delay of the copy, same Kafka offset as the first copy)
REDELIVERED = [("O-dave-1", timedelta(days=1), False), ("O-ivan-1", timedelta(0), True)]


def lake_rows() -> list[dict[str, Any]]:
    """The lake's rows: every order once, then the re-deliveries, with Kafka lineage."""
    rows = []
    for offset, order in enumerate(ORDERS):
        row = order.model_dump(by_alias=True)
        received = order.timestamp + timedelta(seconds=1)
        row.update(kafka_partition=offset % 3, kafka_offset=offset, kafka_timestamp=received)
        rows.append(row)
    first = {row["OrderId"]: row for row in rows}
    for order_id, delay, same_offset in REDELIVERED:
        copy = dict(first[order_id])
        if not same_offset:
            copy.update(
                kafka_offset=len(rows) + 100, kafka_timestamp=copy["kafka_timestamp"] + delay
            )
        rows.append(copy)
    for row in rows:
        row[PARTITION_COLUMN] = row["kafka_timestamp"].date()
    return rows


ALICE_NEW_PRICE = 25.0


def retried_rows() -> list[dict[str, Any]]:
    """The known lake plus the `OrderId`s sent again after the fact, later in Kafka."""
    rows = lake_rows()
    first = {row["OrderId"]: row for row in rows}
    bob, alice = first["O-bob-1"], first["O-alice-1"]
    # The same lines, the other way round, a discount of 0.0 written as -0.0.
    reordered = [
        {**line, "ItemDiscount": -0.0 if line["ItemDiscount"] == 0 else line["ItemDiscount"]}
        for line in reversed(bob["Products"])
    ]
    dearer = [{**alice["Products"][0], "ItemPrice": ALICE_NEW_PRICE}]
    retries = [
        {**bob, "Products": reordered, "kafka_offset": 500},
        {**alice, "Products": dearer, "TotalPrice": 3 * ALICE_NEW_PRICE, "kafka_offset": 501},
        {**alice, "kafka_offset": 502},
    ]
    for later, retry in enumerate(retries, start=1):
        retry["kafka_timestamp"] += timedelta(seconds=10 * later)
        retry[PARTITION_COLUMN] = retry["kafka_timestamp"].date()
    return [*rows, *retries]


def write_lake(rows: list[dict[str, Any]], root: str | Path, filesystem: Any = None) -> None:
    """Write `rows` as Parquet under `root`, partitioned by `ingest_date` like the stream does."""
    table = pa.Table.from_pylist(rows, schema=to_arrow_schema(PURCHASE_ROW))
    pq.write_to_dataset(table, str(root), partition_cols=[PARTITION_COLUMN], filesystem=filesystem)


# The independent computation: plain pandas over the same rows, no Spark.


POSITION = ["kafka_timestamp", "kafka_partition", "kafka_offset"]


def _content(row: dict[str, Any]) -> str:
    """The order's own fields as JSON, lines sorted, every zero positive."""

    def plain(value: Any) -> Any:
        return value + 0.0 if isinstance(value, float) else value

    lines = sorted(
        json.dumps({k: plain(v) for k, v in line.items()}, sort_keys=True)
        for line in row["Products"]
    )
    fields = {k: plain(v) for k, v in row.items() if k not in [*POSITION, PARTITION_COLUMN]}
    return json.dumps({**fields, "Products": lines}, sort_keys=True, default=str)


def reference_versions(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Each version's first copy (same content in any line order is one version), oldest first."""
    frame = pd.DataFrame(rows).assign(content=[_content(row) for row in rows])
    frame = frame.sort_values(POSITION)
    return frame.drop_duplicates(["OrderId", "content"], keep="first").reset_index(drop=True)


def reference_orders(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per OrderId: the first copy of the version that first arrived last."""
    latest = reference_versions(rows).drop_duplicates("OrderId", keep="last")
    return latest.drop(columns="content").reset_index(drop=True)


def reference_lines(orders: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"OrderId": o.OrderId, "UserId": o.UserId, "TimeStamp": o.TimeStamp, **line}
            for o in orders.itertuples()
            for line in o.Products
        ]
    )


def reference_best_selling(orders: pd.DataFrame, limit: int = 10) -> pd.DataFrame:
    lines = reference_lines(orders)
    lines["revenue"] = lines.ItemCount * lines.ItemPrice * (1 - lines.ItemDiscount)
    totals = lines.groupby("ProductId", as_index=False).agg(
        units_sold=("ItemCount", "sum"), revenue=("revenue", "sum")
    )
    totals = totals.rename(columns={"ProductId": "product_id"})
    ranked = totals.sort_values(["units_sold", "product_id"], ascending=[False, True])
    return ranked.head(limit).reset_index(drop=True)


def reference_payment_types(orders: pd.DataFrame) -> pd.DataFrame:
    counts = orders.groupby("PaymentType").size().rename("orders").reset_index()
    counts = counts.rename(columns={"PaymentType": "payment_type"})
    counts["share"] = counts.orders / counts.orders.sum()
    ranked = counts.sort_values(["orders", "payment_type"], ascending=[False, True])
    return ranked.reset_index(drop=True)


def reference_top_customers(orders: pd.DataFrame, now: datetime, limit: int = 10) -> pd.DataFrame:
    hour = orders[(orders.TimeStamp > now - timedelta(hours=1)) & (orders.TimeStamp <= now)]
    in_hour = hour.groupby("UserId").size().rename("orders_in_hour")
    best = hour.sort_values(["TotalPrice", "TimeStamp"], ascending=False).groupby("UserId").head(1)
    best = best.join(in_hour, on="UserId")
    ranked = best.sort_values(["TotalPrice", "UserId"], ascending=[False, True]).head(limit)
    return pd.DataFrame(
        {
            "user_id": ranked.UserId,
            "order_id": ranked.OrderId,
            "order_total": ranked.TotalPrice,
            "ordered_at": ranked.TimeStamp,
            "orders_in_hour": ranked.orders_in_hour,
        }
    ).reset_index(drop=True)


def reference_repeat_purchases(orders: pd.DataFrame) -> pd.DataFrame:
    lines = reference_lines(orders)
    pairs = lines.groupby(["UserId", "ProductId"], as_index=False).agg(
        order_count=("OrderId", "nunique"),
        total_quantity=("ItemCount", "sum"),
        first_purchase_at=("TimeStamp", "min"),
        last_purchase_at=("TimeStamp", "max"),
    )
    pairs = pairs.rename(columns={"UserId": "user_id", "ProductId": "product_id"})
    repeats = pairs[pairs.order_count > 1]
    return repeats.sort_values(["user_id", "product_id"]).reset_index(drop=True)
