"""Spark schemas of the lake, derived from the record models in `app.schemas`.

A purchase row is the order as received (seed field names, nested `Products` kept as an array of
structs) plus its Kafka lineage and the ingestion date the files are partitioned by. A message
that does not parse lands in the quarantine path with its raw value and the reason.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
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


@dataclass(frozen=True)
class ModelField:
    """A field of a record model as the lake sees it. The Spark schema (`model_struct`) and the
    stream's checks (`app.lake.rules`) both walk the models through `model_fields`."""

    name: str  # the wire name (the alias)
    info: FieldInfo
    # The record model of its items, when the field is a list of records (`Products`).
    item_model: type[BaseModel] | None


def _item_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        (inner,) = typing.get_args(annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return None


def model_fields(model: type[BaseModel]) -> list[ModelField]:
    """The fields of a record model in model order, under their wire names."""
    return [
        ModelField(info.alias or attribute, info, _item_model(info.annotation))
        for attribute, info in model.model_fields.items()
    ]


def model_struct(model: type[BaseModel]) -> StructType:
    """Spark struct of a record model, with the wire (alias) field names, in model order."""
    return StructType(
        [
            StructField(field.name, _spark_type(field.info.annotation), nullable=False)
            for field in model_fields(model)
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
