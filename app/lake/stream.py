"""The purchases stream: topic `PurchasedItem` to raw Parquet on S3, every order exactly once.

Two file-sink queries read the same topic, each with its own checkpoint: one writes the valid
orders to `purchases_url`, the other the messages that are not valid orders to
`purchases_quarantine_url`, both partitioned by the ingestion date. Each query is exactly-once on
its own: the offsets of a micro-batch are logged in the checkpoint before it runs, and the batch
becomes visible only when its file list is committed to the sink's `_spark_metadata` log. A batch
cut short (crash, SIGKILL) is re-run from the same offsets on restart; the files the failed
attempt left behind are in no commit, so every reader that honours `_spark_metadata` (Spark, and
`committed_files` below for pyarrow) sees each order once. One query with `foreachBatch` writing
both paths would lose that: its writes are not tied to the commit, so a re-run duplicates them.

"Raw" means one row per message as received: the order's fields under their wire names, the
nested `Products` as an array of structs, the Kafka lineage, and `ingest_date` (the UTC date of
the Kafka timestamp, so a re-run batch lands in the same partition). Validation is derived from
the record model in `app.schemas` (required fields, lengths, ranges, patterns, enum values,
unknown top-level fields); the model-level rules that are Python code (`TotalPrice` equal to the
lines, a time zone on `TimeStamp`) are the API's job and are not repeated here.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import operator
import signal
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
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
from pyspark.errors import StreamingQueryException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.query import StreamingQuery
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from app.core.config import Settings
from app.core.kafka import ensure_topics
from app.infra.process import InfraError
from app.lake.schema import PARTITION_COLUMN, PURCHASE_ROW, PURCHASE_STRUCT, QUARANTINE_ROW
from app.lake.spark import build_spark_session
from app.lake.storage import s3_filesystem
from app.schemas import Purchase

CORRUPT_COLUMN = "_corrupt_record"
# The contract's date-time: ISO 8601 text with a zone (see `app.schemas.Timestamp`).
ISO_DATE_TIME = (
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}(:?\d{2})?)$"
)


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

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
Log = Callable[[str], None]


# --------------------------------------------------------------------------- parsing

# A rule of a record: (its struct -> true when the record breaks the rule, the reason).
Rule = tuple[Callable[[Column], Column], str]

# annotated-types bound -> (its attribute, "breaks the bound" comparison, how the reason says it)
_BOUNDS: dict[type, tuple[str, Callable[[Column, Any], Column], str]] = {
    annotated_types.Ge: ("ge", operator.lt, ">="),
    annotated_types.Gt: ("gt", operator.le, ">"),
    annotated_types.Le: ("le", operator.gt, "<="),
    annotated_types.Lt: ("lt", operator.ge, "<"),
}
# Enforced before the rules run: strict types by parsing into the struct schema (a string where
# a number belongs makes a corrupt record), no NaN/Infinity by the JSON-object check (they are
# not JSON). Validators and serializers are Python code: the API runs them; what they enforce
# on date-times (ISO text with a zone) has its own rule below.
_ENFORCED_ELSEWHERE = (
    Strict,
    AllowInfNan,
    AfterValidator,
    BeforeValidator,
    PlainValidator,
    WrapValidator,
    PlainSerializer,
)


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
    if getattr(item, "pattern", None):
        pattern = item.pattern
        # A rule of the contract (`app.schemas.TextPattern`) says itself what it wants.
        says = getattr(item, "message", None) or f"must match {pattern}"
        return (lambda r: ~r[name].rlike(pattern), f"{where} {says}")
    if isinstance(item, _ENFORCED_ELSEWHERE):
        return None
    # A new kind of constraint in the model must be decided on here, not skipped silently.
    raise TypeError(f"no Spark rule for the constraint {item!r} on {where}")


def _item_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        (inner,) = typing.get_args(annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return None


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
    for attribute, field in model.model_fields.items():
        name = field.alias or attribute
        where = f"{prefix}{name}"
        item_model = _item_model(field.annotation)
        items = record_rules(item_model, f"{where}[].") if item_model else None
        fields.append((name, _value_rules(field, name, where, is_list=bool(item_model)), items))
    return RecordRules(fields)


PURCHASE_RULES = record_rules(Purchase)


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


# --------------------------------------------------------------------------- the queries


@dataclass(frozen=True)
class Sink:
    name: str
    url: str
    checkpoint: str
    rows: Callable[[DataFrame], DataFrame]


def sinks(settings: Settings) -> list[Sink]:
    checkpoints = Path(settings.checkpoint_dir)
    return [
        Sink(
            "purchased_items",
            settings.purchases_url,
            str(checkpoints / "purchased_items"),
            valid_purchases,
        ),
        Sink(
            "purchased_items_quarantine",
            settings.purchases_quarantine_url,
            str(checkpoints / "purchased_items_quarantine"),
            quarantined_purchases,
        ),
    ]


def kafka_messages(spark: SparkSession, settings: Settings) -> DataFrame:
    # Spark 4.1.1's Kafka source (DSv2) fails the first micro-batch after a restart that re-runs
    # an unfinished batch: an NPE in KafkaMicroBatchStream.metrics (SPARK-55271), i.e. after every
    # crash or stop mid-batch. The V1 source reads the same offsets and the same checkpoint
    # format without that bug.
    spark.conf.set(
        "spark.sql.streaming.disabledV2MicroBatchReaders",
        "org.apache.spark.sql.kafka010.KafkaSourceProvider",
    )
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", settings.topic_purchased_item)
        # A new checkpoint starts from the oldest order Kafka still holds, never "from now".
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", settings.spark_max_offsets_per_trigger)
        # Offsets the checkpoint expects but Kafka no longer has (retention, a re-created
        # topic) are lost orders: stop and say so instead of skipping them.
        .option("failOnDataLoss", "true")
        .load()
    )


def start_queries(
    spark: SparkSession, settings: Settings, *, available_now: bool = False
) -> list[StreamingQuery]:
    """Start both file-sink queries; `available_now` processes the backlog, then they end."""
    parsed = parse_purchases(kafka_messages(spark, settings))
    queries = []
    for sink in sinks(settings):
        writer = (
            sink.rows(parsed)
            .writeStream.format("parquet")
            .queryName(f"{sink.name} <- {settings.topic_purchased_item}")
            .outputMode("append")
            .partitionBy(PARTITION_COLUMN)
            .option("path", sink.url)
            .option("checkpointLocation", sink.checkpoint)
        )
        if available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=settings.spark_trigger_interval)
        queries.append(writer.start())
    return queries


def stop_queries(queries: list[StreamingQuery]) -> None:
    """Stop now, even mid-batch: a batch cut short is in no commit and is re-run from its
    logged offsets on the next start. (Waiting for it would not help under honcho, which sends
    SIGKILL 5 s after SIGTERM.)"""
    for query in queries:
        query.stop()


def explain_failure(query: StreamingQuery, exc: StreamingQueryException, settings: Settings) -> str:
    """A person-sized account of a failed query: the cause's first line and what to do."""
    message = str(exc)
    first = next((line for line in message.splitlines() if line.strip()), message)[:400]
    if "NoSuchBucket" in message or "UnknownStoreException" in message:
        advice = (
            f"bucket {settings.s3_bucket} does not exist at {settings.s3_endpoint_url}: "
            "run `task infra-up`"
        )
    elif any(
        sign in message
        for sign in ("ClassNotFound", "NoClassDefFound", "NoSuchMethod", "Failed to find data")
    ):
        advice = (
            "a connector jar is missing or does not match this pyspark: run "
            f"`python -m app.lake.jars` (delete {settings.lab_home / 'jars'} to resolve them again)"
        )
    elif "data loss" in message.lower() or "failOnDataLoss" in message:
        advice = (
            "the checkpoint points at offsets Kafka no longer has (topic re-created or "
            f"retention). To start over from what Kafka holds, delete {settings.checkpoint_dir} "
            "and the lake prefixes it fed"
        )
    else:
        advice = f"see the Spark log above; the checkpoint is in {settings.checkpoint_dir}"
    return f"query {query.name} failed: {first}\n-> {advice}"


def preflight(settings: Settings) -> None:
    """Kafka answers, the topic exists and the bucket exists, or say what to run."""
    try:
        ensure_topics(settings, [settings.topic_purchased_item])
    except Exception as exc:
        raise InfraError(
            f"Kafka is not reachable at {settings.kafka_bootstrap_servers} ({exc}). "
            "Run `task infra-up`."
        ) from exc
    try:
        found = s3_filesystem(settings).exists(settings.s3_bucket)
    except Exception as exc:
        raise InfraError(
            f"S3 is not reachable at {settings.s3_endpoint_url} ({exc}). Run `task infra-up`."
        ) from exc
    if not found:
        raise InfraError(
            f"Bucket {settings.s3_bucket} does not exist at {settings.s3_endpoint_url}. "
            "Run `task infra-up` (it creates the bucket)."
        )


def _stream_session(settings: Settings, master: str | None) -> SparkSession:
    # honcho stops a process by sending SIGTERM to its whole group: the JVM would run its
    # shutdown hooks and kill the queries before Python could stop them. A signal ignored at
    # exec stays ignored in the JVM (PySpark does the same for SIGINT), and the JVM still exits
    # with Python, when its stdin closes.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return build_spark_session(settings, "purchases-stream", kafka=True, master=master, ui=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report_progress(queries: list[StreamingQuery], seen: dict[str, int], log: Log) -> None:
    for query in queries:
        progress = query.lastProgress
        if progress is None or progress["batchId"] <= seen.get(query.name, -1):
            continue
        seen[query.name] = progress["batchId"]
        counts = progress["observedMetrics"].get("messages")
        if counts and counts["messages"]:
            took = progress["durationMs"].get("triggerExecution", 0) / 1000
            log(
                f"{query.name}: batch {progress['batchId']}, {counts['messages']} messages "
                f"({counts['not_valid']} not valid orders) in {took:.1f} s"
            )


@contextlib.contextmanager
def checkpoint_lock(settings: Settings) -> Iterator[None]:
    """One job per checkpoint: two writers of the same commit logs would break exactly-once."""
    path = Path(settings.checkpoint_dir) / "job.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InfraError(
                f"Another stream job is running on the checkpoint {settings.checkpoint_dir} "
                "(the Procfile's `spark` process?). It keeps the lake up to date already; stop "
                "it first if you want to run this one."
            ) from None
        yield


def run_stream(
    settings: Settings,
    *,
    available_now: bool = False,
    master: str | None = None,
    log: Log = print,
) -> None:
    """Run both queries until SIGTERM/Ctrl-C (or, with `available_now`, until the backlog is
    written), then stop them and the session. A failed query raises InfraError."""
    preflight(settings)
    with checkpoint_lock(settings):
        _run(settings, available_now, master, log)


def _run(settings: Settings, available_now: bool, master: str | None, log: Log) -> None:
    spark = _stream_session(settings, master)
    received: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        received.append(signum)
        # The default handlers are back, so a second Ctrl-C interrupts even the stop itself.
        for number, handler in previous.items():
            signal.signal(number, handler)

    previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
    try:
        queries = start_queries(spark, settings, available_now=available_now)
        trigger = "available now" if available_now else f"every {settings.spark_trigger_interval}"
        log(
            f"streaming {settings.topic_purchased_item} -> {settings.purchases_url} "
            f"(quarantine {settings.purchases_quarantine_url}), trigger {trigger}, "
            f"checkpoints in {settings.checkpoint_dir}"
        )
        seen: dict[str, int] = {}
        while not received and any(q.isActive for q in queries):
            _report_progress(queries, seen, log)
            if any(q.exception() is not None for q in queries):
                break
            time.sleep(1.0)
        if received:
            log(f"signal {signal.Signals(received[0]).name}: stopping the queries")
        stop_queries(queries)
        _report_progress(queries, seen, log)
        for query in queries:
            failure = query.exception()
            if failure is not None:
                raise InfraError(explain_failure(query, failure, settings))
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        spark.stop()


def committed_files(settings: Settings, url: str) -> list[str]:
    """The data files a file sink has committed (its `_spark_metadata` log), as s3 keys.

    A reader that lists the folder instead would also see files of a batch cut short by a
    crash; Spark reads this log itself, pyarrow and s3fs readers use this function.
    """
    fs = s3_filesystem(settings)
    log_dir = url.removeprefix("s3a://").rstrip("/") + "/_spark_metadata"
    try:
        names = [Path(key).name for key in fs.ls(log_dir, detail=False)]
    except FileNotFoundError:
        return []
    batches = sorted(
        (int(name.removesuffix(".compact")), name)
        for name in names
        if name.removesuffix(".compact").isdigit()
    )
    # Every tenth batch file is a compaction: all entries so far, so reading starts there.
    start = max((batch for batch, name in batches if name.endswith(".compact")), default=0)
    files: dict[str, None] = {}
    for batch, name in batches:
        if batch < start:
            continue
        for line in fs.cat_file(f"{log_dir}/{name}").decode().splitlines()[1:]:
            entry = json.loads(line)
            path = entry["path"].removeprefix("s3a://")
            if entry.get("action") == "delete":
                files.pop(path, None)
            else:
                files[path] = None
    return list(files)
