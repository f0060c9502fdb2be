"""Validation rules of a record, derived from its model in `app.schemas`, as Spark expressions.

Required fields, lengths, ranges, patterns, enum values and the date-time format are read from the
model's fields, so the stream checks what the API checks without a second copy of the contract.
The model-level rules that are Python code (`TotalPrice` equal to the lines, a time zone on
`TimeStamp`) are the API's job and are not repeated here.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import annotated_types
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    PlainSerializer,
    PlainValidator,
    Strict,
    WrapValidator,
)
from pydantic.fields import FieldInfo
from pyspark.sql import Column
from pyspark.sql import functions as F

from app.lake.schema import model_fields
from app.schemas import NormalForm, Purchase

# The contract's date-time: ISO 8601 text with a zone (see `app.schemas.Timestamp`).
ISO_DATE_TIME = (
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}(:?\d{2})?)$"
)

# A rule of a record: (its struct -> true when the record breaks the rule, the reason).
Rule = tuple[Callable[[Column], Column], str]

# annotated-types bound -> (its attribute, "breaks the bound" comparison, how the reason says it)
_BOUNDS: dict[type, tuple[str, Callable[[Column, Any], Column], str]] = {
    annotated_types.Ge: ("ge", operator.lt, ">="),
    annotated_types.Gt: ("gt", operator.le, ">"),
    annotated_types.Le: ("le", operator.gt, "<="),
    annotated_types.Lt: ("lt", operator.ge, "<"),
}
# Enforced before the rules run (`app.lake.parse`): strict types (a string where a number
# belongs makes a corrupt record; anything but a JSON string where text belongs has its own
# reason), no NaN/Infinity by the JSON-object check (they are not JSON). Validators and
# serializers are Python code: the API runs them; what they enforce on ids (the character rule,
# NFC) is said again by `TextPattern` and `NormalForm`, on date-times (ISO text with a zone) by
# its own rule below.
_ENFORCED_ELSEWHERE = (
    Strict,
    AllowInfNan,
    AfterValidator,
    BeforeValidator,
    PlainValidator,
    WrapValidator,
    PlainSerializer,
)


def normal_form(text: Column) -> Column:
    """`text` in Unicode NFC (`NormalForm`), by the ICU library Spark ships: what Python's
    `unicodedata.normalize("NFC", ...)` gives for every text the identifier rule accepts."""
    composed = F.reflect(F.lit("com.ibm.icu.text.Normalizer"), F.lit("compose"), text, F.lit(False))
    return F.when(text.isNotNull(), composed)  # ICU refuses null


def _constraint_rule(item: Any, name: str, where: str, *, is_list: bool) -> Rule | None:
    if isinstance(item, annotated_types.MinLen | annotated_types.MaxLen):
        size = F.size if is_list else F.length
        unit = "item(s)" if is_list else "character(s)"
        if isinstance(item, annotated_types.MinLen):
            least = item.min_length
            return (
                lambda r: r[name].isNotNull() & (size(r[name]) < least),
                f"{where} must have at least {least} {unit}",
            )
        most = item.max_length
        return (lambda r: size(r[name]) > most, f"{where} must have at most {most} {unit}")
    kind = next((kind for kind in _BOUNDS if isinstance(item, kind)), None)
    if kind is not None:
        attribute, breaks, symbol = _BOUNDS[kind]
        bound = getattr(item, attribute)
        return (lambda r: breaks(r[name], bound), f"{where} must be {symbol} {bound}")
    if isinstance(item, NormalForm):
        return (
            lambda r: F.length(normal_form(r[name])) > item.max_length,
            f"{where} {item.message}",
        )
    if getattr(item, "pattern", None):
        pattern = item.pattern
        # A rule of the contract (`app.schemas.TextPattern`) says itself what it wants.
        says = getattr(item, "message", None) or f"must match {pattern}"
        return (lambda r: ~r[name].rlike(pattern), f"{where} {says}")
    if isinstance(item, _ENFORCED_ELSEWHERE):
        return None
    # A new kind of constraint in the model must be decided on here, not skipped silently.
    raise TypeError(f"no Spark rule for the constraint {item!r} on {where}")


@dataclass(frozen=True)
class RecordRules:
    """The field rules of a record model, as Spark expressions on its parsed struct."""

    # per field: its name, the rules on its value, the rules of each item (list of records)
    fields: list[tuple[str, list[Rule], RecordRules | None]]

    def broken(self, record: Column) -> Column:
        """True when any rule is broken (null when unsure): one pass over each array."""
        conditions = []
        for name, own, items in self.fields:
            conditions += [broken(record) for broken, _ in own]
            if items is not None:
                conditions.append(F.exists(record[name], items.broken))
        return functools.reduce(operator.or_, conditions)

    def rules(self) -> list[Rule]:
        """Every rule with its own reason; a rule of the items is broken if any item breaks it."""
        flat = []
        for name, own, items in self.fields:
            flat += own
            if items is not None:
                flat += [_any_item(name, rule) for rule in items.rules()]
        return flat


def _any_item(name: str, rule: Rule) -> Rule:
    broken, reason = rule
    return (lambda r: F.exists(r[name], broken), reason)


def _value_rules(field: FieldInfo, name: str, where: str, *, is_list: bool) -> list[Rule]:
    rules: list[Rule] = [(lambda r: r[name].isNull(), f"{where} is missing or null")]
    for item in field.metadata:
        rule = _constraint_rule(item, name, where, is_list=is_list)
        if rule is not None:
            rules.append(rule)
    annotation = field.annotation
    if annotation is datetime:
        rules.append(
            (
                lambda r: ~r[name].rlike(ISO_DATE_TIME) | r[name].try_cast("timestamp").isNull(),
                f"{where} must be an ISO 8601 date-time with a zone, e.g. 2026-11-27T10:15:00Z",
            )
        )
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        allowed = [member.value for member in annotation]
        rules.append(
            (lambda r: ~r[name].isin(allowed), f"{where} must be one of {', '.join(allowed)}")
        )
    return rules


def record_rules(model: type[BaseModel], prefix: str = "") -> RecordRules:
    fields = []
    for field in model_fields(model):
        where = f"{prefix}{field.name}"
        items = record_rules(field.item_model, f"{where}[].") if field.item_model else None
        own = _value_rules(field.info, field.name, where, is_list=bool(field.item_model))
        fields.append((field.name, own, items))
    return RecordRules(fields)


PURCHASE_RULES = record_rules(Purchase)
