"""Kafka messages of `PurchasedItem` -> parsed orders, each valid or with every reason it is not.

"Raw" means one row per message as received: the order's fields under their wire names, the
nested `Products` as an array of structs, the Kafka lineage, and `ingest_date` (the UTC date of
the Kafka timestamp, so a re-run batch lands in the same partition). The checks are the rules
derived from the record model (`app.lake.rules`) plus unknown top-level fields.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from app.lake.rules import PURCHASE_RULES
from app.lake.schema import PARTITION_COLUMN, PURCHASE_ROW, PURCHASE_STRUCT, QUARANTINE_ROW

CORRUPT_COLUMN = "_corrupt_record"


def _as_parsed(field: StructField) -> StructField:
    # Times are parsed as text and checked by a rule: Spark would read a number as Unix time
    # and a time without a zone in the session's zone, two things the contract refuses.
    if isinstance(field.dataType, TimestampType):
        return StructField(field.name, StringType())
    if "timestamp" in field.dataType.simpleString():
        raise TypeError(f"{field.name}: date-times inside nested records are not handled")
    return field


PARSE_SCHEMA = StructType(
    [*map(_as_parsed, PURCHASE_STRUCT.fields), StructField(CORRUPT_COLUMN, StringType())]
)


def parse_purchases(messages: DataFrame) -> DataFrame:
    """Kafka rows (`value`, `partition`, `offset`, `timestamp`) -> parsed orders with `error`.

    Columns: `order` (the parsed struct), `error` (null for a valid order, else every reason
    joined by "; "), `raw_value` (the message as text; base64 when it is not UTF-8), the Kafka
    lineage and `ingest_date`. Works on a streaming or a static DataFrame.
    """
    text = F.col("value").cast("string")
    order, keys = F.col("order"), F.col("keys")
    expected = F.array(*[F.lit(field.name) for field in PURCHASE_STRUCT.fields])
    unknown = F.array_except(keys, expected)
    corrupt = order[CORRUPT_COLUMN].isNotNull()
    reasons = F.concat_ws(
        "; ",
        F.when(corrupt, F.lit("a field has the wrong JSON type (it reads as null)")),
        F.when(
            F.size(unknown) > 0,
            F.concat(F.lit("unknown field(s): "), F.array_join(unknown, ", ")),
        ),
        *[F.when(broken(order), F.lit(reason)) for broken, reason in PURCHASE_RULES.rules()],
    )
    # The one combined check runs on every message; the reasons only for the ones that fail it.
    broken = F.coalesce(PURCHASE_RULES.broken(order), F.lit(True))
    suspect = corrupt | (F.size(unknown) > 0) | broken
    error = (
        F.when(F.col("value").isNull(), F.lit("empty message value (tombstone)"))
        .when(~F.is_valid_utf8("text"), F.lit("not UTF-8 text (raw_value holds it in base64)"))
        .when(keys.isNull(), F.lit("not a JSON object"))
        .when(suspect, F.nullif(reasons, F.lit("")))
    )
    return (
        messages.select(
            F.col("value"),
            text.alias("text"),
            F.from_json(text, PARSE_SCHEMA, {"columnNameOfCorruptRecord": CORRUPT_COLUMN}).alias(
                "order"
            ),
            # Null unless the message is a JSON object; its top-level field names otherwise.
            F.json_object_keys(text).alias("keys"),
            F.col("partition").alias("kafka_partition"),
            F.col("offset").alias("kafka_offset"),
            F.col("timestamp").alias("kafka_timestamp"),
            F.to_date(F.col("timestamp")).alias(PARTITION_COLUMN),
        )
        .withColumn("error", error)
        .withColumn(
            "raw_value", F.when(F.is_valid_utf8("text"), F.col("text")).otherwise(F.base64("value"))
        )
        # Counts for each micro-batch's progress report. The node also stops the optimizer from
        # pushing the sinks' `error` filters below this point, which would copy the JSON parsing
        # into every rule that reads the order (measured: about 3x slower).
        .observe(
            "messages",
            F.count(F.lit(1)).alias("messages"),
            F.count("error").alias("not_valid"),
        )
    )


def _lake_column(field: StructField) -> Column:
    if field not in PURCHASE_STRUCT.fields:
        return F.col(field.name)
    column = F.col(f"order.{field.name}")
    # Date-times are parsed as text and checked; the valid ones become timestamps here.
    if isinstance(field.dataType, TimestampType):
        column = column.cast(field.dataType)
    return column.alias(field.name)


def valid_purchases(parsed: DataFrame) -> DataFrame:
    """Rows of `raw/purchased_items/`, in PURCHASE_ROW order."""
    return parsed.where(F.col("error").isNull()).select(*map(_lake_column, PURCHASE_ROW.fields))


def quarantined_purchases(parsed: DataFrame) -> DataFrame:
    """Rows of `raw/purchased_items_quarantine/`, in QUARANTINE_ROW order."""
    return parsed.where(F.col("error").isNotNull()).select(
        *[field.name for field in QUARANTINE_ROW.fields]
    )
