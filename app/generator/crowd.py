"""Fake shoppers, made with Faker: a stable shop and, every second, a new crowd of sessions.

Pure and deterministic: `Crowd(seed).tick(now, users)` builds one second's records from the seed
alone, so the same seed gives the same records. The shop itself (catalogue with fixed prices, the
pool of returning customers and their favourite products) comes from a fixed seed, so every run
sells the same products at the same prices to the same customers; that is what makes repeat
purchases across orders, and across runs, appear.

Each session walks a funnel: it visits a few products (`PageVisited`), reads the reviews of some
of them (`CheckedProductReviews`), puts some in the basket (`AddedBasket`), and sometimes orders
what is in the basket. Timestamps rise along the funnel and fall within the second before `now`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from faker import Faker

from app.schemas import (
    EventAttributes,
    EventName,
    PaymentType,
    Purchase,
    PurchasedProduct,
    UserEvent,
    order_total,
)

# The shop is the same in every run, whatever the crowd's seed.
SHOP_SEED = 20261127
DEFAULT_PRODUCTS = 200
DEFAULT_CUSTOMERS = 2000

RETURNING_SHARE = 0.8  # sessions by a customer of the pool; the rest are first-time guests
FAVOURITE_SHARE = 0.7  # products of interest picked among the customer's favourites
REVIEW_RATE = 0.6
BASKET_RATE = 0.5
ORDER_RATE = 0.5  # sessions with a non-empty basket that end in an order
# Promotions a session may see on a product (fractions of the price); most see none.
DISCOUNTS = (0.0, 0.0, 0.0, 0.0, 0.05, 0.10, 0.15, 0.20, 0.30)
PAYMENT_POPULARITY = {
    PaymentType.CREDIT_CARD: 46,
    PaymentType.DEBIT_CARD: 24,
    PaymentType.PAYPAL: 16,
    PaymentType.BANK_TRANSFER: 9,
    PaymentType.CASH_ON_DELIVERY: 5,
}
ITEM_COUNTS = {1: 70, 2: 20, 3: 7, 5: 3}


@dataclass(frozen=True)
class Product:
    product_id: str
    price: float
    popularity: float  # relative chance of catching a visitor's eye


@dataclass(frozen=True)
class Customer:
    user_id: str
    favourites: tuple[str, ...]  # product ids this customer keeps coming back to


@dataclass(frozen=True)
class Session:
    """One user's visit in one tick: its events in funnel order, then its orders (0 or 1)."""

    user_id: str
    session_id: str
    events: list[UserEvent]
    purchases: list[Purchase]


def _user_id(people: Faker, number: int) -> str:
    """A shopper's e-mail address with a Turkish name, e.g. `özpınar.aksu+3@yandex.com`: ids
    in any script, with `.`, `+` and `@`, flow through every hop of the lab."""
    first, last = (name.lower().replace(" ", ".") for name in people.name().split(" ")[-2:])
    return f"{first}.{last}+{number}@{people.free_email_domain()}"[:64]


@cache  # a pure function of its arguments, and a second to build with 2,000 customers
def build_shop(products: int, customers: int) -> tuple[tuple[Product, ...], tuple[Customer, ...]]:
    """The catalogue and the pool of returning customers, identical in every run."""
    faker = Faker("en_US")
    faker.seed_instance(SHOP_SEED)
    people = Faker("tr_TR")
    people.seed_instance(SHOP_SEED)
    catalogue = tuple(
        Product(
            product_id=f"P-{number:04d}",
            price=faker.pyfloat(right_digits=2, min_value=2, max_value=1500),
            # A few best-sellers and a long tail (Zipf-like).
            popularity=1.0 / (rank + 1) ** 0.8,
        )
        for rank, number in enumerate(faker.random_sample(range(1, 10_000), length=products))
    )
    weights = [product.popularity for product in catalogue]
    pool = tuple(
        Customer(
            user_id=_user_id(people, number),
            favourites=tuple(
                {p.product_id: None for p in faker.random.choices(catalogue, weights, k=4)}
            ),
        )
        for number in range(1, customers + 1)
    )
    return catalogue, pool


class Crowd:
    """Builds each second's sessions; the same seed yields the same sequence of records."""

    def __init__(
        self,
        seed: int | None = None,
        products: int = DEFAULT_PRODUCTS,
        customers: int = DEFAULT_CUSTOMERS,
    ) -> None:
        self.rng = random.Random(seed)
        self.faker = Faker("en_US")
        self.faker.seed_instance(self.rng.getrandbits(64))
        self.people = Faker("tr_TR")
        self.people.seed_instance(self.rng.getrandbits(64))
        self.catalogue, self.customers = build_shop(products, customers)
        self._by_id = {product.product_id: product for product in self.catalogue}
        self._weights = [product.popularity for product in self.catalogue]
        self._guests = 0

    def tick(self, now: datetime, users: int) -> list[Session]:
        """`users` sessions whose events happened during the second before `now`."""
        return [self._session(now) for _ in range(users)]

    def _customer(self) -> Customer:
        if self.rng.random() < RETURNING_SHARE:
            return self.rng.choice(self.customers)
        self._guests += 1
        return Customer(user_id=f"guest-{_user_id(self.people, self._guests)}", favourites=())

    def _interests(self, customer: Customer) -> list[Product]:
        wanted = self.rng.choice((1, 1, 2, 2, 3, 4))
        picked: dict[str, Product] = {}
        for _ in range(wanted):
            if customer.favourites and self.rng.random() < FAVOURITE_SHARE:
                product = self._by_id[self.rng.choice(customer.favourites)]
            else:
                product = self.rng.choices(self.catalogue, self._weights)[0]
            picked[product.product_id] = product
        return list(picked.values())

    def _session(self, now: datetime) -> Session:
        customer = self._customer()
        session_id = self.faker.uuid4()
        visited = self._interests(customer)
        discount = {product.product_id: self.rng.choice(DISCOUNTS) for product in visited}
        reviewed = [p for p in visited if self.rng.random() < REVIEW_RATE]
        # Reviewed products are likelier to land in the basket than ones only glanced at.
        basket = [
            p
            for p in visited
            if self.rng.random() < (BASKET_RATE if p in reviewed else BASKET_RATE / 3)
        ]
        steps = [
            *((EventName.PAGE_VISITED, p) for p in visited),
            *((EventName.CHECKED_PRODUCT_REVIEWS, p) for p in reviewed),
            *((EventName.ADDED_BASKET, p) for p in basket),
        ]
        ordered = bool(basket) and self.rng.random() < ORDER_RATE
        # Distinct whole microseconds within the second before `now`: strictly rising times.
        offsets = sorted(self.rng.sample(range(1_000_000), len(steps) + ordered))
        times = [now - timedelta(microseconds=1_000_000 - offset) for offset in offsets]
        events = [
            UserEvent(
                user_id=customer.user_id,
                session_id=session_id,
                event_name=name,
                timestamp=at,
                attributes=EventAttributes(
                    product_id=product.product_id,
                    price=product.price,
                    discount=discount[product.product_id],
                ),
            )
            for (name, product), at in zip(steps, times[: len(steps)], strict=True)
        ]
        purchases = []
        if ordered:
            lines = [
                PurchasedProduct(
                    product_id=p.product_id,
                    item_count=self.rng.choices(list(ITEM_COUNTS), list(ITEM_COUNTS.values()))[0],
                    item_price=p.price,
                    item_discount=discount[p.product_id],
                )
                for p in basket
            ]
            purchases.append(
                Purchase(
                    session_id=session_id,
                    timestamp=times[-1],
                    user_id=customer.user_id,
                    total_price=order_total(lines),
                    order_id=self.faker.uuid4(),
                    products=lines,
                    payment_type=self.rng.choices(
                        list(PAYMENT_POPULARITY), list(PAYMENT_POPULARITY.values())
                    )[0],
                )
            )
        return Session(customer.user_id, session_id, events, purchases)
