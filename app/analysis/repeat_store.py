"""The `repeat_purchases` table in PostgreSQL: its schema and its atomic replacement."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from psycopg2 import sql

from app.core.config import Settings

COLUMNS = (
    "user_id",
    "product_id",
    "order_count",
    "total_quantity",
    "first_purchase_at",
    "last_purchase_at",
)

RepeatRow = tuple[str, str, int, int, datetime, datetime]


def ensure_schema(conn: Any, settings: Settings) -> str:
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """
                CREATE TABLE IF NOT EXISTS {table} (
                    user_id           text        NOT NULL,
                    product_id        text        NOT NULL,
                    order_count       integer     NOT NULL CHECK (order_count > 1),
                    total_quantity    bigint      NOT NULL,
                    first_purchase_at timestamptz NOT NULL,
                    last_purchase_at  timestamptz NOT NULL,
                    PRIMARY KEY (user_id, product_id)
                )
                """
            ).format(table=sql.Identifier(settings.repeat_purchases_table))
        )
    conn.commit()
    return f"postgres {settings.postgres_database}.{settings.repeat_purchases_table}: ready"


def replace_repeat_purchases(conn: Any, settings: Settings, rows: Iterable[Sequence[Any]]) -> int:
    """Replace the table's content in one transaction: DELETE every row, then COPY the new rows.

    A concurrent reader sees the old rows until COMMIT, then the new ones; never an empty or
    half-written table, and it never waits. DELETE rather than TRUNCATE because TRUNCATE is not
    MVCC-safe: a REPEATABLE READ reader whose snapshot predates the commit would find the table
    empty. The SHARE ROW EXCLUSIVE lock lets readers through but queues a second writer until
    this one commits, so two replacements cannot interleave. Times must carry a time zone.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    count = 0
    for row in rows:
        writer.writerow([_copy_value(value) for value in row])
        count += 1
    buffer.seek(0)
    table = sql.Identifier(settings.repeat_purchases_table)
    try:
        with conn.cursor() as cur:
            lock = sql.SQL("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
            cur.execute(lock.format(table=table))
            cur.execute(sql.SQL("DELETE FROM {table}").format(table=table))
            cur.copy_expert(
                sql.SQL("COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)")
                .format(table=table, columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))
                .as_string(conn),
                buffer,
            )
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    return count


def _copy_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            # PostgreSQL would read a bare time in its session's zone, not necessarily UTC.
            raise ValueError(f"time {value.isoformat()} has no time zone; pass an aware datetime")
        return value.isoformat()
    return value
