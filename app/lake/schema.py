"""Spark schemas of the lake, derived from the record models in `app.schemas`.

A purchase row is the order as received (seed field names, nested `Products` kept as an array of
structs) plus its Kafka lineage and the ingestion date the files are partitioned by. A message
that does not parse lands in the quarantine path with its raw value and the reason.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from app.schemas import Purchase

PARTITION_COLUMN = "ingest_date"
LINEAGE_FIELDS = [
    StructField("kafka_partition", IntegerType(), nullable=False),
    StructField("kafka_offset", LongType(), nullable=False),
    StructField("kafka_timestamp", TimestampType(), nullable=False),
]


def _spark_type(annotation: Any) -> DataType:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _spark_type(typing.get_args(annotation)[0])
    if origin in (list, typing.List):  # noqa: UP006 - both spellings can reach here
        return ArrayType(_spark_type(typing.get_args(annotation)[0]), containsNull=False)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _spark_type(inner)
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return model_struct(annotation)
        if issubclass(annotation, Enum | str):
            return StringType()
        if issubclass(annotation, bool):
            raise TypeError("booleans are not part of the lake schema")
        if issubclass(annotation, int):
            return LongType()
        if issubclass(annotation, float):
            return DoubleType()
        if issubclass(annotation, datetime):
            return TimestampType()
    raise TypeError(f"no Spark type for {annotation!r}")


def model_struct(model: type[BaseModel]) -> StructType:
    """Spark struct of a record model, with the wire (alias) field names, in model order."""
    return StructType(
        [
            StructField(field.alias or name, _spark_type(field.annotation), nullable=False)
            for name, field in model.model_fields.items()
        ]
    )


PURCHASE_STRUCT = model_struct(Purchase)
"""The JSON value of a `PurchasedItem` message."""

PURCHASE_ROW = StructType(
    [*PURCHASE_STRUCT.fields, *LINEAGE_FIELDS, StructField(PARTITION_COLUMN, DateType(), False)]
)
"""A row of `raw/purchased_items/`."""

QUARANTINE_ROW = StructType(
    [
        StructField("raw_value", StringType(), nullable=True),
        StructField("error", StringType(), nullable=False),
        *LINEAGE_FIELDS,
        StructField(PARTITION_COLUMN, DateType(), False),
    ]
)
"""A row of `raw/purchased_items_quarantine/`: a message that is not a valid purchase."""
