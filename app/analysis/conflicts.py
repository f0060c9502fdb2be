"""What one order is, when its `OrderId` reached the lake more than once; found without Spark.

The definition, shared by Spark (`app.analysis.purchases`) and this module (pyarrow, for `task
status`), and stated in notebook 1:

- An `OrderId` is one order. A *copy* is one lake row of it; copies with the same *canonical
  content* are one *version*. The canonical content is the order's own fields (not its Kafka
  lineage) with every float in one form (-0.0 is 0.0) and the `Products` lines sorted by all
  their fields, so a retry that lists the same lines in another order is the same version.
- A copy's *Kafka position* is (`kafka_timestamp`, `kafka_partition`, `kafka_offset`), compared
  in that order: the producer's send time first, because it is comparable across partitions
  (versions with another `UserId`, the record key, may sit in another partition) and across a
  re-created topic, whose offsets start again; within one partition and millisecond, the offset
  (Kafka's own order); the partition number only breaks a tie between partitions.
- A version's position is its *first* copy's. The version counted is the one with the latest
  position; its first copy is the row kept. A re-delivery is never new information, so
  re-sending an old batch cannot bring back a superseded version. Should two versions share a
  position (possible only across a re-created topic), the greater canonical content wins: Python
  tuples and Spark structs order it alike.
- An `OrderId` with more than one version is a *conflict*: every version stays in the lake and is
  listed (notebook 1, `task status`), and the order counts once, as the counted version.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.types import ArrayType, DataType, DoubleType, StructType

from app.lake.schema import PURCHASE_STRUCT

ORDER_FIELDS = [field.name for field in PURCHASE_STRUCT.fields]
POSITION_FIELDS = ["kafka_timestamp", "kafka_partition", "kafka_offset"]
COLUMNS = [*ORDER_FIELDS, *POSITION_FIELDS]
"""The lake columns `conflicting_orders` reads."""


class KafkaPosition(NamedTuple):
    timestamp: datetime
    partition: int
    offset: int


@dataclass(frozen=True)
class Conflict:
    """An `OrderId` stored with `versions` different contents; `counted` is where the counted
    version first arrived."""

    versions: int
    counted: KafkaPosition


def canonical_content(value: Any, kind: DataType = PURCHASE_STRUCT) -> Any:
    """The canonical content of a lake value of Spark type `kind` (an order by default), as
    nested tuples: equal exactly when the values are the same order."""
    if isinstance(kind, StructType):
        return tuple(canonical_content(value[field.name], field.dataType) for field in kind.fields)
    if isinstance(kind, ArrayType):
        return tuple(sorted(canonical_content(item, kind.elementType) for item in value))
    if isinstance(kind, DoubleType):
        return value + 0.0  # IEEE: -0.0 + 0.0 is 0.0
    return value


def conflicting_orders(rows: pa.Table) -> dict[str, Conflict]:
    """`OrderId` -> its `Conflict`, for ids stored with more than one version, by id.

    `rows` holds lake rows (at least `COLUMNS`). Re-deliveries of one version, in any line order,
    are not conflicts. Only ids seen more than once are compared, so the cost follows them.
    """
    counts = rows.group_by("OrderId").aggregate([("OrderId", "count")])
    repeated = counts.filter(pc.greater(counts["OrderId_count"], 1))["OrderId"]
    if len(repeated) == 0:
        return {}
    candidates = rows.filter(pc.is_in(rows["OrderId"], value_set=repeated)).select(COLUMNS)
    # OrderId -> canonical content -> the version's first position.
    versions: dict[str, dict[tuple[Any, ...], KafkaPosition]] = defaultdict(dict)
    for row in candidates.to_pylist():
        content = canonical_content(row)
        position = KafkaPosition(*(row[name] for name in POSITION_FIELDS))
        seen = versions[row["OrderId"]]
        seen[content] = min(seen.get(content, position), position)
    conflicts = {}
    for order_id, seen in sorted(versions.items()):
        if len(seen) > 1:
            counted = max(seen.items(), key=lambda version: (version[1], version[0]))
            conflicts[order_id] = Conflict(len(seen), counted[1])
    return conflicts
