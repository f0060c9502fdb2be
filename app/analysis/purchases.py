"""The four analyses of the purchases lake, as Spark DataFrame functions.

Each function takes the lake's rows (`app.lake.schema.PURCHASE_ROW`, read with a plain
`spark.read.parquet(<top folder>)`) after `dedupe_orders`, and returns a small DataFrame the
notebook shows. Definitions, stated once here and above each answer in the notebook:

- an order is counted once, however many times it was delivered (same `OrderId`);
- a product line's revenue is `ItemCount * ItemPrice * (1 - ItemDiscount)`;
- "the last hour" is `TimeStamp` in (now - 1 hour, now], with "now" given, not read from a clock;
- a repeat purchase is a (customer, product) pair found in more than one *distinct* order:
  3 units in one order is one purchase, not a repeat.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg2 import sql
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from app.core.config import Settings

LAST_HOUR = timedelta(hours=1)
TOP = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def read_purchases(spark: Any, url: str) -> DataFrame:
    """The lake's purchase rows under `url` (the top folder; partitions are discovered)."""
    return spark.read.parquet(url)


def dedupe_orders(purchases: DataFrame) -> DataFrame:
    """One row per `OrderId`: the copy Kafka delivered first.

    The stream is at-least-once and a client may resend a batch, so the same order can land in the
    lake more than once; counting it twice would inflate every answer below.
    """
    first_delivery = Window.partitionBy("OrderId").orderBy(
        "kafka_timestamp", "kafka_partition", "kafka_offset"
    )
    return (
        purchases.withColumn("_delivery", F.row_number().over(first_delivery))
        .where(F.col("_delivery") == 1)
        .drop("_delivery")
    )


def _product_lines(orders: DataFrame) -> DataFrame:
    """One row per product line: the order's keys next to the line's fields."""
    return orders.select(
        "OrderId", "UserId", "TimeStamp", F.explode("Products").alias("line")
    ).select("OrderId", "UserId", "TimeStamp", "line.*")


def best_selling_products(orders: DataFrame, limit: int = TOP) -> DataFrame:
    """Products by units sold (sum of `ItemCount`), with revenue; ties by `product_id`."""
    return (
        _product_lines(orders)
        .groupBy(F.col("ProductId").alias("product_id"))
        .agg(
            F.sum("ItemCount").alias("units_sold"),
            F.sum(F.col("ItemCount") * F.col("ItemPrice") * (1 - F.col("ItemDiscount"))).alias(
                "revenue"
            ),
        )
        .orderBy(F.desc("units_sold"), "product_id")
        .limit(limit)
    )


def payment_type_preference(orders: DataFrame) -> DataFrame:
    """Orders per `PaymentType` and each type's share of all orders, most used first."""
    return (
        orders.groupBy(F.col("PaymentType").alias("payment_type"))
        .agg(F.count("*").alias("orders"))
        .withColumn("share", F.col("orders") / F.sum("orders").over(Window.partitionBy()))
        .orderBy(F.desc("orders"), "payment_type")
    )


def preferred_payment_types(preference: Any) -> list[str]:
    """The most preferred payment type(s) of a collected `payment_type_preference`; all on a tie."""
    if len(preference) == 0:
        return []
    most = preference["orders"].max()
    return list(preference.loc[preference["orders"] == most, "payment_type"])


def top_customers_last_hour(orders: DataFrame, now: datetime, limit: int = TOP) -> DataFrame:
    """Customers by their highest-value order with `TimeStamp` in (now - 1 hour, now].

    One row per customer: that order's `OrderId`, `TotalPrice` and time, and how many orders the
    customer placed in the hour. Ties on the value are broken by `user_id`; among one customer's
    orders of equal value the latest is shown.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must carry a time zone, e.g. datetime.now(UTC)")
    best = F.max(F.struct("TotalPrice", "TimeStamp", "OrderId"))
    return (
        orders.where(
            (F.col("TimeStamp") > F.lit(now - LAST_HOUR)) & (F.col("TimeStamp") <= F.lit(now))
        )
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


def repeat_purchases(orders: DataFrame) -> DataFrame:
    """(customer, product) pairs bought in more than one distinct order.

    Columns are the `repeat_purchases` table's: `user_id`, `product_id`, `order_count` (distinct
    orders with the product), `total_quantity` (units over those orders), `first_purchase_at`,
    `last_purchase_at`.
    """
    # A product may fill several lines of one order. Only its first line in the order counts the
    # order, so one aggregation counts distinct orders without grouping by order first.
    lines = orders.select(
        "UserId",
        "TimeStamp",
        F.col("Products.ProductId").alias("product_ids"),
        F.posexplode("Products").alias("position", "line"),
    )
    first_line_of_product = (
        F.array_position("product_ids", F.col("line.ProductId")) == F.col("position") + 1
    )
    return (
        lines.groupBy(
            F.col("UserId").alias("user_id"), F.col("line.ProductId").alias("product_id")
        )
        .agg(
            F.count_if(first_line_of_product).alias("order_count"),
            F.sum("line.ItemCount").alias("total_quantity"),
            F.min("TimeStamp").alias("first_purchase_at"),
            F.max("TimeStamp").alias("last_purchase_at"),
        )
        .where(F.col("order_count") > 1)
    )


def repeat_rows(repeats: DataFrame) -> Iterator[tuple[str, str, int, int, datetime, datetime]]:
    """The rows of `repeat_purchases(...)` as Python tuples with UTC-aware times.

    Times travel as epoch microseconds: collecting Spark timestamps as `datetime` would render
    them in the Python process's local zone, without one.
    """
    micros = repeats.select(
        "user_id",
        "product_id",
        "order_count",
        "total_quantity",
        F.unix_micros("first_purchase_at").alias("first_us"),
        F.unix_micros("last_purchase_at").alias("last_us"),
    )
    for row in micros.toLocalIterator():
        yield (
            row.user_id,
            row.product_id,
            int(row.order_count),
            int(row.total_quantity),
            _EPOCH + timedelta(microseconds=row.first_us),
            _EPOCH + timedelta(microseconds=row.last_us),
        )


def top_repurchased_products_query(settings: Settings, limit: int = TOP) -> sql.Composed:
    """Notebook 2's SQL over `repeat_purchases`: the most re-purchased products.

    Ranked by how many customers re-purchased the product, then by their orders of it, then by
    `product_id` in byte order (`COLLATE "C"`, the order Spark and Python use, whatever the
    database's locale).
    """
    return sql.SQL(
        """SELECT product_id,
       count(*)            AS repeat_customers,
       sum(order_count)    AS repeat_orders,
       sum(total_quantity) AS units
FROM {table}
GROUP BY product_id
ORDER BY repeat_customers DESC, repeat_orders DESC, product_id COLLATE "C"
LIMIT {limit}"""
    ).format(table=sql.Identifier(settings.repeat_purchases_table), limit=sql.Literal(limit))
