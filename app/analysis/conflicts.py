"""Orders that arrived under one `OrderId` with different content, found without Spark.

`task status` uses this on the lake's committed Parquet files (pyarrow); the notebook uses
`app.analysis.purchases.order_conflicts`, the same definition in Spark.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from app.lake.schema import PURCHASE_STRUCT

ORDER_FIELDS = [field.name for field in PURCHASE_STRUCT.fields]


def conflicting_orders(rows: pa.Table) -> dict[str, int]:
    """`OrderId` -> number of distinct versions, for ids stored with more than one content.

    `rows` holds lake rows (at least the order's own fields). Re-deliveries of the same content
    are not conflicts. Only ids seen more than once are compared, so the cost follows them.
    """
    counts = rows.group_by("OrderId").aggregate([("OrderId", "count")])
    repeated = counts.filter(pc.greater(counts["OrderId_count"], 1))["OrderId"]
    if len(repeated) == 0:
        return {}
    candidates = rows.filter(pc.is_in(rows["OrderId"], value_set=repeated)).select(ORDER_FIELDS)
    versions: dict[str, set[str]] = defaultdict(set)
    for row in candidates.to_pylist():
        versions[row["OrderId"]].add(json.dumps(row, sort_keys=True, default=str))
    return {order_id: len(seen) for order_id, seen in sorted(versions.items()) if len(seen) > 1}
