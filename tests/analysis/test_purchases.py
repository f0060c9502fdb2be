"""The four analyses on the known lake, against the answers stated in `dataset` and pandas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pytest
from pandas.testing import assert_frame_equal
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema

from app.analysis.conflicts import Conflict, KafkaPosition, conflicting_orders
from app.analysis.purchases import (
    best_selling_products,
    dedupe_orders,
    delivery_summary,
    latest_order_at,
    order_conflicts,
    parse_now,
    payment_type_preference,
    preferred_payment_types,
    read_purchases,
    repeat_purchases,
    repeat_rows,
    top_customers_last_hour,
)
from app.analysis.repeat_store import COLUMNS
from app.lake.schema import PURCHASE_ROW
from tests.analysis.dataset import (
    ALICE_NEW_PRICE,
    NOW,
    lake_rows,
    reference_best_selling,
    reference_orders,
    reference_payment_types,
    reference_repeat_purchases,
    reference_top_customers,
    retried_rows,
    write_lake,
)

REFERENCE = reference_orders(lake_rows())


def _same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal frames: same columns, rows and order; floats to 1e-9; times to the microsecond."""

    def normal(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.reset_index(drop=True).copy()
        for name in frame.columns:
            if isinstance(frame[name].dtype, pd.DatetimeTZDtype):
                frame[name] = frame[name].dt.tz_convert(UTC).astype("datetime64[us, UTC]")
            elif pd.api.types.is_integer_dtype(frame[name]):
                frame[name] = frame[name].astype("int64")
        return frame

    assert_frame_equal(normal(actual), normal(expected), check_exact=False, rtol=1e-9)


def test_each_order_counts_once(spark, known_lake, orders: DataFrame) -> None:
    assert delivery_summary(read_purchases(spark, str(known_lake))) == (21, 19)
    kept = {row.OrderId: row.kafka_offset for row in orders.collect()}
    assert len(kept) == 19
    assert kept["O-dave-1"] == 5, "the copy Kafka delivered first is kept"


def test_best_selling_products(orders: DataFrame) -> None:
    best = best_selling_products(orders)
    _same(best, reference_best_selling(REFERENCE))
    assert list(best.product_id) == [
        "P-05", "P-03", "P-07", "P-08", "P-02", "P-01", "P-09", "P-04", "P-10", "P-12",
    ]  # fmt: skip
    units = dict(zip(best.product_id, best.units_sold, strict=True))
    assert units["P-04"] == 2, "dave's re-delivered order is not sold twice"
    assert units["P-03"] == 6 and units["P-01"] == 3
    assert best.set_index("product_id").revenue["P-03"] == pytest.approx(2 * 5 * 0.9 + 5 + 10 + 5)


def test_payment_type_preference(orders: DataFrame) -> None:
    preference = payment_type_preference(orders)
    _same(preference, reference_payment_types(REFERENCE))
    assert list(preference.orders) == [9, 5, 4, 1]
    assert preference.share.sum() == pytest.approx(1.0)
    assert preferred_payment_types(preference) == ["CreditCard"]


def test_preferred_payment_types_names_every_winner_on_a_tie() -> None:
    tie = pd.DataFrame({"payment_type": ["DebitCard", "PayPal", "CreditCard"], "orders": [4, 4, 1]})
    assert preferred_payment_types(tie) == ["DebitCard", "PayPal"]
    assert preferred_payment_types(tie.iloc[0:0]) == []


def test_top_customers_last_hour(orders: DataFrame) -> None:
    top = top_customers_last_hour(orders, NOW)
    _same(top, reference_top_customers(REFERENCE, NOW))
    assert list(top.user_id) == [
        "dave", "jack", "erin", "ivan", "lee", "alice", "kim", "bob", "gina", "u-tie-a",
    ]  # fmt: skip
    by_user = top.set_index("user_id")
    assert by_user.order_id["erin"] == "O-erin-59", "61 minutes ago is outside the hour"
    assert by_user.order_total["erin"] == 100.0
    assert by_user.order_id["jack"] == "O-jack-2" and by_user.orders_in_hour["jack"] == 2
    assert by_user.orders_in_hour["dave"] == 1, "a re-delivered order is one order"
    assert "frank" not in by_user.index, "exactly one hour ago is outside (now - 1 h, now]"
    assert "hank" not in by_user.index, "an order after 'now' is not in the last hour"


def test_top_customers_window_follows_now(orders: DataFrame) -> None:
    """'now' is a parameter: two minutes later, erin's 59-minute order has left the hour."""
    later = top_customers_last_hour(orders, NOW + timedelta(minutes=2))
    assert "erin" not in set(later.user_id)
    assert "hank" in set(later.user_id)
    in_other_zone = NOW.astimezone(timezone(timedelta(hours=3)))
    _same(top_customers_last_hour(orders, in_other_zone), top_customers_last_hour(orders, NOW))


def test_top_customers_refuses_a_time_without_zone(orders: DataFrame) -> None:
    with pytest.raises(ValueError, match="time zone"):
        top_customers_last_hour(orders, NOW.replace(tzinfo=None))


def test_repeat_purchases(orders: DataFrame) -> None:
    repeats = repeat_purchases(orders).orderBy("user_id", "product_id").toArrow().to_pandas()
    expected = reference_repeat_purchases(REFERENCE)
    assert [
        (r.user_id, r.product_id, r.order_count, r.total_quantity) for r in repeats.itertuples()
    ] == [
        ("bob", "P-02", 2, 5),
        ("carol", "P-03", 2, 4),  # two lines of one order are one order
        ("erin", "P-05", 2, 10),
        ("lee", "P-08", 2, 6),
    ]  # alice's 3 units in one order and dave's re-delivered order are not repeats
    rows = pd.DataFrame(list(repeat_rows(repeat_purchases(orders))), columns=expected.columns)
    _same(rows.sort_values(["user_id", "product_id"]), expected)


def test_repeat_rows_carry_utc_times(orders: DataFrame) -> None:
    rows = {(r[0], r[1]): r for r in repeat_rows(repeat_purchases(orders))}
    first, last = rows[("bob", "P-02")][4:]
    assert first == NOW - timedelta(hours=5) and first.utcoffset() == timedelta(0)
    assert last == NOW - timedelta(minutes=30)


def test_latest_order_at(orders: DataFrame) -> None:
    assert latest_order_at(orders) == NOW + timedelta(minutes=1)
    assert latest_order_at(orders.limit(0)) is None


def test_parse_now() -> None:
    assert parse_now("2026-03-01T15:00:00+03:00") == NOW
    assert parse_now("2026-03-01T12:00:00Z") == NOW
    before = datetime.now(UTC)
    assert before <= parse_now("") <= datetime.now(UTC)
    with pytest.raises(ValueError, match="no time zone"):
        parse_now("2026-03-01T12:00:00")
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        parse_now("yesterday")


def test_a_new_read_sees_re_deliveries_that_landed_since(spark, tmp_path) -> None:
    """Re-reading the folder after new files landed de-duplicates against the new files too."""
    rows = lake_rows()
    write_lake(rows, tmp_path)
    assert dedupe_orders(read_purchases(spark, str(tmp_path))).count() == 19
    alice = next(row for row in rows if row["OrderId"] == "O-alice-1")
    late_copy = {**alice, "kafka_offset": 999, "kafka_timestamp": NOW + timedelta(days=3)}
    write_lake([{**late_copy, "ingest_date": late_copy["kafka_timestamp"].date()}], tmp_path)
    again = dedupe_orders(read_purchases(spark, str(tmp_path)))
    assert again.count() == 19
    assert again.where("OrderId = 'O-alice-1'").first().kafka_offset == alice["kafka_offset"]


@pytest.fixture(scope="module")
def retried(spark, tmp_path_factory) -> DataFrame:
    """The lake's rows as read: the known lake plus the orders senders sent again."""
    root = tmp_path_factory.mktemp("retried")
    write_lake(retried_rows(), root)
    return read_purchases(spark, str(root))


def test_a_retry_with_reordered_lines_is_the_same_order(retried: DataFrame) -> None:
    assert "O-bob-1" not in set(order_conflicts(retried)["OrderId"])
    (bob,) = dedupe_orders(retried).where("OrderId = 'O-bob-1'").collect()
    assert bob.kafka_offset == 1, "the first copy of the one version is kept"


def test_a_changed_order_is_one_conflict_counted_once_as_its_latest_version(
    retried: DataFrame,
) -> None:
    assert delivery_summary(retried) == (24, 19)  # every copy stays in the lake
    conflicts = order_conflicts(retried)
    assert conflicts["OrderId"].tolist() == ["O-alice-1", "O-alice-1"]
    assert conflicts["versions"].tolist() == [2, 2]
    # Her old version arrived again later (offset 502): a re-delivery does not make it latest.
    assert conflicts["kafka_offset"].tolist() == [0, 501]
    assert conflicts["counted"].tolist() == [False, True]
    assert conflicts["TotalPrice"].tolist() == [60.0, 3 * ALICE_NEW_PRICE]
    orders = dedupe_orders(retried)
    assert orders.count() == 19
    (alice,) = orders.where("OrderId = 'O-alice-1'").collect()
    assert (alice.kafka_offset, alice.TotalPrice) == (501, 3 * ALICE_NEW_PRICE)


def test_every_analysis_counts_each_order_id_once(retried: DataFrame) -> None:
    """Retried and changed orders count once, the changed one with its latest version's values."""
    orders = dedupe_orders(retried)
    reference = reference_orders(retried_rows())
    best = best_selling_products(orders)
    _same(best, reference_best_selling(reference))
    p01 = best.set_index("product_id").loc["P-01"]
    assert (p01.units_sold, p01.revenue) == (3, 3 * ALICE_NEW_PRICE)
    assert best.set_index("product_id").units_sold["P-02"] == 5
    preference = payment_type_preference(orders)
    _same(preference, reference_payment_types(reference))
    assert list(preference.orders) == [9, 5, 4, 1]
    top = top_customers_last_hour(orders, NOW)
    _same(top, reference_top_customers(reference, NOW))
    alice = top.set_index("user_id").loc["alice"]
    assert (alice.order_total, alice.orders_in_hour) == (3 * ALICE_NEW_PRICE, 1)
    repeats = pd.DataFrame(list(repeat_rows(repeat_purchases(orders))), columns=list(COLUMNS))
    repeats = repeats.sort_values(["user_id", "product_id"])
    _same(repeats, reference_repeat_purchases(reference))
    assert [(r.user_id, r.product_id, r.order_count) for r in repeats.itertuples()] == [
        ("bob", "P-02", 2),
        ("carol", "P-03", 2),
        ("erin", "P-05", 2),
        ("lee", "P-08", 2),
    ]  # neither alice's P-01 nor bob's P-03 is a repeat purchase


def test_spark_and_pyarrow_agree_on_conflicts(retried: DataFrame) -> None:
    in_spark = order_conflicts(retried)
    counted = in_spark[in_spark["counted"]]
    from_spark = {
        row.OrderId: Conflict(
            row.versions,
            KafkaPosition(
                row.kafka_timestamp.to_pydatetime(), row.kafka_partition, row.kafka_offset
            ),
        )
        for row in counted.itertuples()
    }
    from_arrow = conflicting_orders(
        pa.Table.from_pylist(retried_rows(), schema=to_arrow_schema(PURCHASE_ROW))
    )
    assert from_arrow == from_spark
    assert list(from_arrow) == ["O-alice-1"]


def test_the_known_lake_has_no_conflicts(spark, known_lake) -> None:
    assert order_conflicts(read_purchases(spark, str(known_lake))).empty
