"""The crowd builder on its own: deterministic, consistent, believable (no services needed)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from app.generator.crowd import Crowd, Session
from app.schemas import EventName, PaymentType, Purchase, order_total

NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
FUNNEL_RANK = {
    EventName.PAGE_VISITED: 0,
    EventName.CHECKED_PRODUCT_REVIEWS: 1,
    EventName.ADDED_BASKET: 2,
}


def _run(seed: int, ticks: int, users: int = 20) -> list[Session]:
    crowd = Crowd(seed)
    return [s for t in range(ticks) for s in crowd.tick(NOW + timedelta(seconds=t), users)]


@pytest.fixture(scope="module")
def minute() -> list[Session]:
    """Sixty one-second ticks of twenty users."""
    return _run(seed=7, ticks=60)


def _wire(sessions: list[Session]) -> list[bytes]:
    return [r.to_json_bytes() for s in sessions for r in [*s.events, *s.purchases]]


def test_same_seed_gives_the_same_records() -> None:
    assert _wire(_run(seed=42, ticks=3)) == _wire(_run(seed=42, ticks=3))


def test_another_seed_gives_other_records() -> None:
    assert _wire(_run(seed=42, ticks=3)) != _wire(_run(seed=43, ticks=3))


def test_each_tick_is_a_crowd_of_distinct_sessions_from_the_last_second() -> None:
    sessions = Crowd(1).tick(NOW, 50)
    assert len(sessions) == 50
    assert len({s.session_id for s in sessions}) == 50
    assert all(s.events for s in sessions)
    records = [r for s in sessions for r in [*s.events, *s.purchases]]
    assert all(NOW - timedelta(seconds=1) <= r.timestamp < NOW for r in records)


def test_totals_agree_with_the_lines_and_revalidate(minute: list[Session]) -> None:
    orders = [p for s in minute for p in s.purchases]
    assert len(orders) > 100
    for order in orders:
        assert order.total_price == order_total(order.products)
        # What the API will do with it: validate the wire form again.
        assert Purchase.model_validate_json(order.to_json_bytes()) == order
    assert len({o.order_id for o in orders}) == len(orders)


def test_funnel_order_holds_in_every_session(minute: list[Session]) -> None:
    for session in minute:
        ranks = [FUNNEL_RANK[e.event_name] for e in session.events]
        assert ranks == sorted(ranks), session.session_id
        times = [e.timestamp for e in session.events] + [p.timestamp for p in session.purchases]
        assert times == sorted(times) and len(set(times)) == len(times)
        by_stage: dict[EventName, set[str]] = defaultdict(set)
        for event in session.events:
            assert event.user_id == session.user_id
            assert event.session_id == session.session_id
            by_stage[event.event_name].add(event.attributes.product_id)
        visited = by_stage[EventName.PAGE_VISITED]
        assert by_stage[EventName.CHECKED_PRODUCT_REVIEWS] <= visited
        assert by_stage[EventName.ADDED_BASKET] <= visited
        for order in session.purchases:
            assert order.session_id == session.session_id
            assert order.user_id == session.user_id
            assert {line.product_id for line in order.products} <= by_stage[EventName.ADDED_BASKET]


def test_prices_are_stable_per_product(minute: list[Session]) -> None:
    prices: dict[str, set[float]] = defaultdict(set)
    for session in minute:
        for event in session.events:
            prices[event.attributes.product_id].add(event.attributes.price)
        for order in session.purchases:
            for line in order.products:
                prices[line.product_id].add(line.item_price)
    assert len(prices) > 50
    assert all(len(seen) == 1 for seen in prices.values())


def test_the_shop_is_the_same_whatever_the_seed() -> None:
    assert Crowd(1).catalogue == Crowd(2).catalogue
    assert Crowd(1).customers == Crowd(2).customers


def test_returning_customers_buy_the_same_product_again(minute: list[Session]) -> None:
    orders_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for session in minute:
        for order in session.purchases:
            for line in order.products:
                orders_of[order.user_id, line.product_id].add(order.order_id)
    repeats = [pair for pair, orders in orders_of.items() if len(orders) > 1]
    assert len(repeats) >= 3, repeats


def test_payment_types_are_unevenly_popular(minute: list[Session]) -> None:
    counts = Counter(p.payment_type for s in minute for p in s.purchases)
    favourite, _ = counts.most_common(1)[0]
    assert favourite == PaymentType.CREDIT_CARD
    assert counts[PaymentType.CREDIT_CARD] > 3 * counts[PaymentType.CASH_ON_DELIVERY]
