"""The four analyses of the purchases lake, and notebook 2's SQL over their PostgreSQL table.

The lake's rows (`app.lake.schema.PURCHASE_ROW`) are read with a plain `spark.read.parquet(<top
folder>)` and passed through `dedupe_orders` first. The small answers come back as pandas frames,
ready to show; the repeat purchases stay a Spark DataFrame until `repeat_rows` hands them to
PostgreSQL. Definitions, stated here once and above each answer in the notebook:

- an `OrderId` is one order and counts once, however many times and in how many versions it
  arrived: copies with the same content (in any line order) are one version; of an id's versions
  the one whose first copy is latest by Kafka position is counted, and `order_conflicts` lists
  every version of an id that has several, so nothing is dropped without a word (the exact rule,
  shared with `task status`, is in `app.analysis.conflicts`);
- a product line's revenue is `ItemCount * ItemPrice * (1 - ItemDiscount)`;
- "the last hour" is `TimeStamp` in (now - 1 hour, now], with "now" given, not read from a clock;
- a repeat purchase is a (customer, product) pair found in more than one *distinct* order:
  3 units in one order is one purchase, not a repeat.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from psycopg2 import sql
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, DoubleType, StructType

from app.analysis.conflicts import POSITION_FIELDS
from app.analysis.repeat_store import COLUMNS, RepeatRow
from app.core.config import Settings
from app.lake.schema import PURCHASE_STRUCT

LAST_HOUR = timedelta(hours=1)
TOP = 10


def parse_now(value: str) -> datetime:
    """The analysis's "now": an ISO 8601 time with a zone; the current time if `value` is ""."""
    if not value:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"now={value!r} is not an ISO 8601 time; write e.g. 2026-11-27T10:15:00Z"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"now={value!r} has no time zone; add Z or an offset such as +03:00")
    return parsed.astimezone(UTC)


def tune_for_analysis(spark: SparkSession) -> None:
    """Runtime SQL settings for one-shot analyses of a small lake on a two-core machine."""
    # Let adaptive execution merge the few shuffle partitions further when they are small.
    spark.conf.set("spark.sql.adaptive.enabled", "true")
    # Spark's "window group limit" pre-sorts every input partition before the shuffle to cut
    # groups early; de-duplication groups are all of two rows or so, so that sort is pure cost.
    spark.conf.set("spark.sql.optimizer.windowGroupLimitThreshold", "-1")


def read_purchases(spark: SparkSession, url: str) -> DataFrame:
    """The purchase rows under `url`, the lake's top folder (partitions are discovered)."""
    return spark.read.parquet(url)


def _canonical(column: Column, kind: DataType) -> Column:
    """`app.analysis.conflicts.canonical_content` in Spark: floats in one form, arrays sorted."""
    if isinstance(kind, StructType):
        return F.struct(
            *[_canonical(column[f.name], f.dataType).alias(f.name) for f in kind.fields]
        )
    if isinstance(kind, ArrayType):
        # Structs compare field by field, so this sorts lines by a total order of their fields.
        return F.array_sort(F.transform(column, lambda item: _canonical(item, kind.elementType)))
    if isinstance(kind, DoubleType):
        return column + 0.0  # IEEE: -0.0 + 0.0 is 0.0
    return column


def _order_content() -> Column:
    """An order's canonical content: its own fields (not where and when Kafka delivered it)."""
    return F.struct(
        *[_canonical(F.col(f.name), f.dataType).alias(f.name) for f in PURCHASE_STRUCT.fields]
    )


def _repeated_ids(purchases: DataFrame) -> DataFrame:
    """Hashes of the `OrderId`s with more than one row: a small, checkpointed Spark job."""
    # A local checkpoint rather than `cache()`, which a later read of the same folder would match
    # and so reuse stale after new files landed.
    return (
        purchases.groupBy(F.xxhash64("OrderId").alias("order_hash"))
        .count()
        .where(F.col("count") > 1)
        .select("order_hash")
        .localCheckpoint()
    )


def _is_repeated(repeated: DataFrame) -> Column:
    return F.xxhash64("OrderId") == repeated["order_hash"]


def _versions(purchases: DataFrame, repeated: DataFrame) -> DataFrame:
    """One row per version of each repeated `OrderId` (its first copy), with `versions` (how many
    the id has) and `counted` (whether it is the version that counts)."""
    position = [F.col(name) for name in POSITION_FIELDS]
    # All three windows cluster by OrderId: one shuffle, of the repeated ids' rows only.
    by_order = Window.partitionBy("OrderId")
    first_copy = Window.partitionBy("OrderId", "_content").orderBy(*position)
    latest = by_order.orderBy(*[c.desc() for c in position], F.col("_content").desc())
    return (
        purchases.join(F.broadcast(repeated), _is_repeated(repeated), "left_semi")
        .withColumn("_content", _order_content())
        .repartition("OrderId")
        .withColumn("_copy", F.row_number().over(first_copy))
        .where(F.col("_copy") == 1)
        .withColumn("versions", F.count("*").over(by_order))
        .withColumn("counted", F.row_number().over(latest) == 1)
        .drop("_copy", "_content")
    )


def dedupe_orders(purchases: DataFrame) -> DataFrame:
    """One row per `OrderId`: the first copy of its counted version (`app.analysis.conflicts`).

    Delivery is at-least-once, a client may resend a batch, and a sender may send an order again
    with other content; counting any of those twice would inflate every answer. Runs two small
    Spark jobs.
    """
    # Repeated ids are rare, so only rows whose id hash occurs more than once take the exact
    # (shuffling, sorting) path, here and once; every other row passes a broadcast anti-join in
    # each analysis and is never shuffled. A hash collision merely sends a unique order down the
    # exact path.
    repeated = _repeated_ids(purchases)
    counted = (
        _versions(purchases, repeated)
        .where(F.col("counted"))
        .drop("versions", "counted")
        .localCheckpoint()
    )
    delivered_once = purchases.join(F.broadcast(repeated), _is_repeated(repeated), "left_anti")
    return delivered_once.unionByName(counted)


def order_conflicts(purchases: DataFrame) -> pd.DataFrame:
    """`OrderId`s stored in more than one version: one row per version, oldest first.

    `purchases` are the lake's rows as read (before `dedupe_orders`). Columns: `OrderId`,
    `versions` (how many), `counted` (the version the analyses count), and each version's
    `UserId`, `TimeStamp`, `TotalPrice`, `PaymentType`, `lines` and first Kafka position.
    """
    conflicting = (
        _versions(purchases, _repeated_ids(purchases))
        .where(F.col("versions") > 1)
        .orderBy("OrderId", *POSITION_FIELDS)
        .select(
            "OrderId",
            "versions",
            "counted",
            "UserId",
            "TimeStamp",
            "TotalPrice",
            "PaymentType",
            F.size("Products").alias("lines"),
            *POSITION_FIELDS,
        )
    )
    return _collect(conflicting)


def delivery_summary(purchases: DataFrame) -> tuple[int, int]:
    """How many rows the lake holds and how many orders (distinct `OrderId`s) they are."""
    ((rows, orders),) = purchases.agg(F.count("*"), F.count_distinct("OrderId")).collect()
    return int(rows), int(orders)


def _collect(frame: DataFrame) -> pd.DataFrame:
    # Through Arrow, times arrive as UTC-aware values whatever the Python process's zone.
    result: pd.DataFrame = frame.toArrow().to_pandas()
    return result


def best_selling_products(orders: DataFrame, limit: int = TOP) -> pd.DataFrame:
    """The `limit` products with most units sold (sum of `ItemCount`), with their revenue.

    Columns `product_id`, `units_sold`, `revenue`; ties on units by `product_id`.
    """
    lines = orders.select(F.explode("Products").alias("line")).select("line.*")
    revenue = F.col("ItemCount") * F.col("ItemPrice") * (1 - F.col("ItemDiscount"))
    return _collect(
        lines.groupBy(F.col("ProductId").alias("product_id"))
        .agg(F.sum("ItemCount").alias("units_sold"), F.sum(revenue).alias("revenue"))
        .orderBy(F.desc("units_sold"), "product_id")
        .limit(limit)
    )


def payment_type_preference(orders: DataFrame) -> pd.DataFrame:
    """Orders per payment type and each type's share of all orders, most used first.

    Columns `payment_type`, `orders`, `share` (0..1); ties on orders by `payment_type`.
    """
    counts = _collect(
        orders.groupBy(F.col("PaymentType").alias("payment_type"))
        .agg(F.count("*").alias("orders"))
        .orderBy(F.desc("orders"), "payment_type")
    )
    counts["share"] = counts["orders"] / counts["orders"].sum()
    return counts


def preferred_payment_types(preference: pd.DataFrame) -> list[str]:
    """The most preferred payment type of a `payment_type_preference` answer; all on a tie."""
    if preference.empty:
        return []
    most = preference["orders"].max()
    return list(preference.loc[preference["orders"] == most, "payment_type"])


def top_customers_last_hour(orders: DataFrame, now: datetime, limit: int = TOP) -> pd.DataFrame:
    """The `limit` customers with the highest-value order placed in (now - 1 hour, now].

    One row per customer: `user_id`, that order's `order_id`, `order_total` (its `TotalPrice`)
    and `ordered_at`, and `orders_in_hour`. Ties on the value by `user_id`; of one customer's
    orders of equal value, the latest is shown.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must carry a time zone, e.g. datetime.now(UTC)")
    in_hour = (F.col("TimeStamp") > F.lit(now - LAST_HOUR)) & (F.col("TimeStamp") <= F.lit(now))
    best = F.max(F.struct("TotalPrice", "TimeStamp", "OrderId"))
    return _collect(
        orders.where(in_hour)
        .groupBy(F.col("UserId").alias("user_id"))
        .agg(best.alias("best"), F.count("*").alias("orders_in_hour"))
        .select(
            "user_id",
            F.col("best.OrderId").alias("order_id"),
            F.col("best.TotalPrice").alias("order_total"),
            F.col("best.TimeStamp").alias("ordered_at"),
            "orders_in_hour",
        )
        .orderBy(F.desc("order_total"), "user_id")
        .limit(limit)
    )


def latest_order_at(orders: DataFrame) -> datetime | None:
    """When the newest order in the lake was placed (None if the lake is empty), UTC."""
    frame = _collect(orders.agg(F.max("TimeStamp").alias("latest")))
    latest = frame["latest"].iloc[0]
    return None if pd.isna(latest) else latest.to_pydatetime()


def repeat_purchases(orders: DataFrame) -> DataFrame:
    """(customer, product) pairs bought in more than one distinct order, one row per pair.

    `orders` holds one row per `OrderId` (`dedupe_orders`), so each order counts once.
    Columns are the `repeat_purchases` table's: `user_id`, `product_id`, `order_count` (distinct
    orders with the product), `total_quantity` (units over those orders), `first_purchase_at`,
    `last_purchase_at`.
    """
    # A product may fill several lines of one order. Only its first line there counts the order,
    # so one aggregation counts distinct orders without grouping by order first. Shuffling the
    # orders by customer first lets that aggregation run where the rows are: a shuffle of 1 row
    # per order instead of ~1 per product line.
    lines = orders.repartition("UserId").select(
        "UserId",
        "TimeStamp",
        F.col("Products.ProductId").alias("product_ids"),
        F.posexplode("Products").alias("position", "line"),
    )
    first_line_of_product = (
        F.array_position("product_ids", F.col("line.ProductId")) == F.col("position") + 1
    )
    return (
        lines.groupBy(F.col("UserId").alias("user_id"), F.col("line.ProductId").alias("product_id"))
        .agg(
            F.count_if(first_line_of_product).alias("order_count"),
            F.sum("line.ItemCount").alias("total_quantity"),
            F.min("TimeStamp").alias("first_purchase_at"),
            F.max("TimeStamp").alias("last_purchase_at"),
        )
        .where(F.col("order_count") > 1)
    )


def repeat_rows(repeats: DataFrame) -> Iterator[RepeatRow]:
    """The rows of a `repeat_purchases` answer as tuples for `replace_repeat_purchases`.

    Collected through Arrow in one go, so times arrive as UTC-aware values; pandas turns them
    into Python datetimes several times faster than Arrow's own `to_pylist`.
    """
    frame = _collect(repeats)
    columns = [
        list(frame[name].dt.to_pydatetime())
        if isinstance(frame[name].dtype, pd.DatetimeTZDtype)
        else frame[name].tolist()
        for name in COLUMNS
    ]
    yield from zip(*columns, strict=True)


def top_repurchased_products_query(settings: Settings, limit: int = TOP) -> sql.Composed:
    """Notebook 2's SQL over `repeat_purchases`: the most re-purchased products.

    Ranked by how many customers re-purchased the product, then by those customers' orders of it,
    then by `product_id` in byte order (`COLLATE "C"`: the order Spark and Python use, whatever
    the database's locale).
    """
    return sql.SQL(
        """SELECT product_id,
       count(*)                    AS repeat_customers,
       sum(order_count)::bigint    AS repeat_orders,
       sum(total_quantity)::bigint AS units
FROM {table}
GROUP BY product_id
ORDER BY repeat_customers DESC, repeat_orders DESC, product_id COLLATE "C"
LIMIT {limit}"""
    ).format(table=sql.Identifier(settings.repeat_purchases_table), limit=sql.Literal(limit))


def top_repurchased_products(conn: Any, settings: Settings, limit: int = TOP) -> pd.DataFrame:
    """Run `top_repurchased_products_query`: `product_id`, `repeat_customers`, `repeat_orders`,
    `units`."""
    with conn.cursor() as cur:
        cur.execute(top_repurchased_products_query(settings, limit))
        names = [column.name for column in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=names)
