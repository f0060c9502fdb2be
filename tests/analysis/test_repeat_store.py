"""The `repeat_purchases` table on the real PostgreSQL: each OrderId counted once, exact content,
atomic replacement, and notebook 2's SQL against an independent ranking."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg2
import pytest
from psycopg2 import sql

from app.analysis.purchases import (
    dedupe_orders,
    read_purchases,
    repeat_purchases,
    repeat_rows,
    top_repurchased_products,
    top_repurchased_products_query,
)
from app.analysis.repeat_store import COLUMNS, replace_repeat_purchases
from app.core.clients import postgres_connection
from app.core.config import Settings
from tests.analysis.dataset import (
    reference_orders,
    reference_repeat_purchases,
    retried_rows,
    write_lake,
)

START = datetime(2026, 3, 1, tzinfo=UTC)


def _rows(count: int, tag: str) -> list[tuple[Any, ...]]:
    return [
        (f"U-{tag}-{n}", f"P-{n % 50:02d}", 2 + n % 3, 5 + n, START, START + timedelta(hours=n))
        for n in range(count)
    ]


@pytest.fixture
def conn(scope_settings: Settings) -> Iterator[Any]:
    connection = postgres_connection(scope_settings)
    yield connection
    connection.close()


def _content(conn: Any, settings: Settings) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY user_id, product_id").format(
                sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
                sql.Identifier(settings.repeat_purchases_table),
            )
        )
        rows: list[tuple[Any, ...]] = cur.fetchall()
    conn.commit()
    return rows


def _count(conn: Any, settings: Settings) -> int:
    with conn.cursor() as cur:
        table = sql.Identifier(settings.repeat_purchases_table)
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
        count: int = cur.fetchone()[0]
    return count


def test_each_order_id_counts_once_in_the_table(
    spark: Any, tmp_path: Path, conn: Any, scope_settings: Settings
) -> None:
    """A retry with reordered lines and a changed order, through Spark to PostgreSQL: neither
    makes a repeat purchase; the table holds the pandas reference's rows exactly."""
    write_lake(retried_rows(), tmp_path)
    orders = dedupe_orders(read_purchases(spark, str(tmp_path)))
    replace_repeat_purchases(conn, scope_settings, repeat_rows(repeat_purchases(orders)))
    stored = _content(conn, scope_settings)
    expected = reference_repeat_purchases(reference_orders(retried_rows()))
    assert stored == [
        (r.user_id, r.product_id, r.order_count, r.total_quantity, *times)
        for r in expected.itertuples()
        for times in [(r.first_purchase_at.to_pydatetime(), r.last_purchase_at.to_pydatetime())]
    ]
    assert [row[:4] for row in stored] == [
        ("bob", "P-02", 2, 5),
        ("carol", "P-03", 2, 4),
        ("erin", "P-05", 2, 10),
        ("lee", "P-08", 2, 6),
    ]


def test_replace_writes_exactly_the_rows(conn: Any, scope_settings: Settings) -> None:
    first = _rows(30, "a")
    assert replace_repeat_purchases(conn, scope_settings, first) == 30
    second = _rows(7, "b")
    assert replace_repeat_purchases(conn, scope_settings, iter(second)) == 7
    assert _content(conn, scope_settings) == sorted(second)


def test_a_time_without_zone_is_refused_and_nothing_changes(
    conn: Any, scope_settings: Settings
) -> None:
    replace_repeat_purchases(conn, scope_settings, _rows(3, "kept"))
    naive = [("U-1", "P-1", 2, 2, datetime(2026, 3, 1), datetime(2026, 3, 2))]
    with pytest.raises(ValueError, match="no time zone"):
        replace_repeat_purchases(conn, scope_settings, naive)
    assert _content(conn, scope_settings) == sorted(_rows(3, "kept"))


def test_a_failed_replacement_keeps_the_old_rows(conn: Any, scope_settings: Settings) -> None:
    replace_repeat_purchases(conn, scope_settings, _rows(3, "kept"))
    duplicate_key = [*_rows(2, "x"), _rows(1, "x")[0]]
    with pytest.raises(psycopg2.errors.UniqueViolation):
        replace_repeat_purchases(conn, scope_settings, duplicate_key)
    assert _content(conn, scope_settings) == sorted(_rows(3, "kept"))


def test_concurrent_reader_sees_old_or_new_rows_never_empty_or_half(
    conn: Any, scope_settings: Settings
) -> None:
    """A reader polling on its own connection while the table is replaced 6 times sees only
    complete generations: 20,000 or 30,000 rows, never 0 and never a count in between."""
    sizes = {"a": 20_000, "b": 30_000}
    generations = {tag: _rows(size, tag) for tag, size in sizes.items()}
    replace_repeat_purchases(conn, scope_settings, generations["a"])
    seen: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        reader = postgres_connection(scope_settings)
        reader.autocommit = True
        try:
            while not stop.is_set():
                seen.append(_count(reader, scope_settings))
        finally:
            reader.close()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(0.2)
        for tag in "babab" + "a":
            replace_repeat_purchases(conn, scope_settings, generations[tag])
        time.sleep(0.2)
    finally:
        stop.set()
        poller.join()
    assert len(seen) > 20, "the reader should have polled throughout"
    assert set(seen) == set(sizes.values()), f"reader saw counts {sorted(set(seen))}"


def test_snapshot_reader_keeps_its_view(conn: Any, scope_settings: Settings) -> None:
    """A REPEATABLE READ reader whose snapshot predates a replacement still sees the old rows
    (after TRUNCATE it would see an empty table: TRUNCATE is not MVCC-safe)."""
    replace_repeat_purchases(conn, scope_settings, _rows(5, "old"))
    reader = postgres_connection(scope_settings)
    try:
        reader.set_session(isolation_level="REPEATABLE READ")
        with reader.cursor() as cur:
            cur.execute("SELECT 1")  # the transaction's snapshot is taken here
        replace_repeat_purchases(conn, scope_settings, _rows(9, "new"))
        assert _count(reader, scope_settings) == 5
        reader.rollback()
        assert _count(reader, scope_settings) == 9
    finally:
        reader.close()


def test_two_writers_at_once_both_finish_and_one_wins_whole(
    conn: Any, scope_settings: Settings
) -> None:
    batches = [_rows(20_000, "w1"), _rows(25_000, "w2")]
    errors: list[BaseException] = []

    def write(rows: list[tuple[Any, ...]]) -> None:
        writer = postgres_connection(scope_settings)
        try:
            replace_repeat_purchases(writer, scope_settings, rows)
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer.close()

    threads = [threading.Thread(target=write, args=(rows,)) for rows in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _content(conn, scope_settings) in [sorted(rows) for rows in batches]


def _reference_top(rows: list[tuple[Any, ...]], limit: int = 10) -> pd.DataFrame:
    pairs = pd.DataFrame(rows, columns=list(COLUMNS))
    ranked = pairs.groupby("product_id", as_index=False).agg(
        repeat_customers=("user_id", "size"),
        repeat_orders=("order_count", "sum"),
        units=("total_quantity", "sum"),
    )
    # Python compares strings by code point, which is PostgreSQL's "C" collation.
    ranked = ranked.sort_values(
        ["repeat_customers", "repeat_orders", "product_id"], ascending=[False, False, True]
    )
    return ranked.head(limit).reset_index(drop=True)


def test_top_repurchased_products_sql(conn: Any, scope_settings: Settings) -> None:
    def pair(user: str, product: str, orders: int) -> tuple[Any, ...]:
        return (user, product, orders, orders * 2, START, START + timedelta(days=1))

    rows = [
        # Most customers wins, even against more orders.
        *[pair(f"u{n}", "P-many", 2) for n in range(4)],
        pair("u0", "P-orders", 9),
        pair("u1", "P-orders", 9),
        pair("u2", "P-orders", 9),
        # 2 customers each: ties broken by repeat orders, then by product id in byte order
        # ("P-b" before "p-a", where a linguistic collation would put "p-a" first).
        pair("u0", "P-x", 3),
        pair("u1", "P-x", 3),
        pair("u0", "p-a", 2),
        pair("u1", "p-a", 2),
        pair("u0", "P-b", 2),
        pair("u1", "P-b", 2),
        # Eight products with one customer: only the first by orders, then id, make the top 10.
        *[pair("u9", f"P-one-{n}", 2 + n % 3) for n in range(8)],
    ]
    replace_repeat_purchases(conn, scope_settings, rows)
    top = top_repurchased_products(conn, scope_settings)
    conn.commit()
    expected = _reference_top(rows)
    assert list(top.columns) == list(expected.columns)
    assert top.to_dict("records") == expected.to_dict("records")
    assert list(top.product_id[:5]) == ["P-many", "P-orders", "P-x", "P-b", "p-a"]
    assert len(top) == 10
    shown = top_repurchased_products_query(scope_settings).as_string(conn)
    assert "ORDER BY repeat_customers DESC, repeat_orders DESC" in shown
    assert "LIMIT 10" in shown
