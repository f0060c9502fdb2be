"""Kafka messages of `PurchasedItem` -> parsed orders, each valid or with every reason it is not.

"Raw" means one row per message as received: the order's fields under their wire names, the
nested `Products` as an array of structs, the Kafka lineage, and `ingest_date` (the UTC date of
the Kafka timestamp, so a re-run batch lands in the same partition). The checks are the rules
derived from the record model (`app.lake.rules`), strict JSON types and unknown top-level fields.
A valid order is stored in the canonical form the API gives it: ids in NFC, one zero (0.0).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable

from pydantic import BaseModel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DoubleType,
    StringType,
    StructField,
    StructType,
    TimestampType,
    VariantType,
)

from app.lake.rules import PURCHASE_RULES, Rule, normal_form
from app.lake.schema import (
    PARTITION_COLUMN,
    PURCHASE_ROW,
    PURCHASE_STRUCT,
    QUARANTINE_ROW,
    model_fields,
    model_struct,
)
from app.schemas import NormalForm, Purchase

CORRUPT_COLUMN = "_corrupt_record"


def _as_parsed(data_type: DataType) -> DataType:
    # Text is parsed as a variant, which keeps the JSON type: into a string Spark would turn a
    # number, a boolean or an object into its JSON text, which the API refuses. Times are text
    # too, checked by a rule: Spark would read a number as Unix time and a time without a zone
    # in the session's zone, two things the contract refuses.
    if isinstance(data_type, StringType | TimestampType):
        return VariantType()
    if isinstance(data_type, ArrayType):
        return ArrayType(_as_parsed(data_type.elementType), data_type.containsNull)
    if isinstance(data_type, StructType):
        return StructType(_parsed_fields(data_type))
    return data_type


def _parsed_fields(struct: StructType) -> list[StructField]:
    return [StructField(f.name, _as_parsed(f.dataType), f.nullable) for f in struct.fields]


PARSE_SCHEMA = StructType(
    [*_parsed_fields(PURCHASE_STRUCT), StructField(CORRUPT_COLUMN, StringType())]
)


def _as_text(value: Column, parsed: DataType) -> Column:
    """The parsed order with every variant as text (a number as its JSON text: its own rule
    refuses it), so the model's rules read it as they read the contract."""
    if isinstance(parsed, VariantType):
        return F.variant_get(value, "$", "string")
    if isinstance(parsed, ArrayType):
        return F.transform(value, lambda item: _as_text(item, parsed.elementType))
    if isinstance(parsed, StructType):
        fields = [_as_text(value[f.name], f.dataType).alias(f.name) for f in parsed.fields]
        return F.when(value.isNotNull(), F.struct(*fields))
    return value


def _not_text(value: Column) -> Column:
    # A missing field or a JSON null is the "missing or null" rule's business.
    return value.isNotNull() & ~F.schema_of_variant(value).isin("STRING", "VOID")


def _type_rules(parsed: StructType, prefix: str = "") -> list[Rule]:
    """A rule per text field of the parsed order: a JSON string, nothing else (as pydantic)."""
    rules: list[Rule] = []
    for field in parsed.fields:
        where, kind = f"{prefix}{field.name}", field.dataType
        if isinstance(kind, VariantType):
            rules.append((_field_not_text(field.name), f"{where} must be a string"))
        elif isinstance(kind, ArrayType) and isinstance(kind.elementType, StructType):
            rules += [
                (_in_any_item(field.name, broken), reason)
                for broken, reason in _type_rules(kind.elementType, f"{where}[].")
            ]
    return rules


# Factories, not lambdas with default arguments: Spark reads a two-argument lambda as (item, index).
def _field_not_text(name: str) -> Callable[[Column], Column]:
    return lambda record: _not_text(record[name])


def _in_any_item(name: str, broken: Callable[[Column], Column]) -> Callable[[Column], Column]:
    return lambda record: F.exists(record[name], broken)


TYPE_RULES = _type_rules(PARSE_SCHEMA)

# A `\u` escape of a UTF-16 surrogate without its pair is not valid JSON (the API refuses the
# body with 400), but Spark reads it as "?". An escape starts after an even run of backslashes.
_SURROGATE_ESCAPE = r"\\u[dD][89a-fA-F]"
_ESCAPE_START = r"(?<!\\)((?:\\\\)*+)\\u"
_SURROGATE_PAIR = _ESCAPE_START + r"[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_LONE_SURROGATE = _ESCAPE_START + r"[dD][89a-fA-F]"


def _lone_surrogate(text: Column) -> Column:
    # Only the rare text with a surrogate escape pays for the pairs' removal.
    return text.rlike(_SURROGATE_ESCAPE) & F.regexp_replace(text, _SURROGATE_PAIR, "$1").rlike(
        _LONE_SURROGATE
    )


def _any(rules: list[Rule], record: Column) -> Column:
    return functools.reduce(operator.or_, [broken(record) for broken, _ in rules])


def parse_purchases(messages: DataFrame) -> DataFrame:
    """Kafka rows (`value`, `partition`, `offset`, `timestamp`) -> parsed orders with `error`.

    Columns: `order` (the parsed struct, its text fields as sent), `error` (null for a valid
    order, else every reason joined by "; "), `raw_value` (the message as text; base64 when it
    is not UTF-8), the Kafka lineage and `ingest_date`. Works on a streaming or a static
    DataFrame.
    """
    text = F.col("value").cast("string")
    parsed, order, keys = F.col("parsed"), F.col("order"), F.col("keys")
    expected = F.array(*[F.lit(field.name) for field in PURCHASE_STRUCT.fields])
    unknown = F.array_except(keys, expected)
    corrupt = parsed[CORRUPT_COLUMN].isNotNull()
    reasons = F.concat_ws(
        "; ",
        F.when(corrupt, F.lit("a field has the wrong JSON type (it reads as null)")),
        F.when(
            F.size(unknown) > 0,
            F.concat(F.lit("unknown field(s): "), F.array_join(unknown, ", ")),
        ),
        *[F.when(broken(parsed), F.lit(reason)) for broken, reason in TYPE_RULES],
        *[F.when(broken(order), F.lit(reason)) for broken, reason in PURCHASE_RULES.rules()],
    )
    # The one combined check runs on every message; the reasons only for the ones that fail it.
    broken = F.coalesce(_any(TYPE_RULES, parsed) | PURCHASE_RULES.broken(order), F.lit(True))
    suspect = corrupt | (F.size(unknown) > 0) | broken
    error = (
        F.when(F.col("value").isNull(), F.lit("empty message value (tombstone)"))
        .when(~F.is_valid_utf8("text"), F.lit("not UTF-8 text (raw_value holds it in base64)"))
        .when(keys.isNull(), F.lit("not a JSON object"))
        .when(
            _lone_surrogate(F.col("text")),
            F.lit("not valid JSON: a \\u escape of a lone UTF-16 surrogate (\\uD800-\\uDFFF)"),
        )
        .when(suspect, F.nullif(reasons, F.lit("")))
    )
    return (
        messages.select(
            F.col("value"),
            text.alias("text"),
            F.from_json(text, PARSE_SCHEMA, {"columnNameOfCorruptRecord": CORRUPT_COLUMN}).alias(
                "parsed"
            ),
            # Null unless the message is a JSON object; its top-level field names otherwise.
            F.json_object_keys(text).alias("keys"),
            F.col("partition").alias("kafka_partition"),
            F.col("offset").alias("kafka_offset"),
            F.col("timestamp").alias("kafka_timestamp"),
            F.to_date(F.col("timestamp")).alias(PARTITION_COLUMN),
        )
        .withColumn("order", _as_text(parsed, PARSE_SCHEMA))
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


def _stored_fields(record: Column, model: type[BaseModel]) -> list[Column]:
    """The fields of a valid record as the lake stores them: the canonical form of the API's
    records (ids in NFC, -0.0 as 0.0), date-times (checked as text) as timestamps."""
    columns = []
    for field, struct_field in zip(model_fields(model), model_struct(model).fields, strict=True):
        column, kind = record[field.name], struct_field.dataType
        if field.item_model is not None:
            column = F.transform(column, _stored_record(field.item_model))
        elif any(isinstance(item, NormalForm) for item in field.info.metadata):
            column = normal_form(column)
        elif isinstance(kind, DoubleType):
            column = column + 0.0
        elif isinstance(kind, TimestampType):
            column = column.cast(kind)
        columns.append(column.alias(field.name))
    return columns


def _stored_record(model: type[BaseModel]) -> Callable[[Column], Column]:
    return lambda record: F.struct(*_stored_fields(record, model))


def valid_purchases(parsed: DataFrame) -> DataFrame:
    """Rows of `raw/purchased_items/`, in PURCHASE_ROW order."""
    lineage = [F.col(f.name) for f in PURCHASE_ROW.fields if f not in PURCHASE_STRUCT.fields]
    return parsed.where(F.col("error").isNull()).select(
        *_stored_fields(F.col("order"), Purchase), *lineage
    )


def quarantined_purchases(parsed: DataFrame) -> DataFrame:
    """Rows of `raw/purchased_items_quarantine/`, in QUARANTINE_ROW order."""
    return parsed.where(F.col("error").isNotNull()).select(
        *[field.name for field in QUARANTINE_ROW.fields]
    )
