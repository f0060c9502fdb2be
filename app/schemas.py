"""The record contract: one definition of each record, used by every hop.

The API validates requests with these models, the generator builds them, the DAG re-validates
what it reads from Kafka, and the Spark schema of the lake is derived from them. Field names on
the wire, in Kafka, in MongoDB and in Parquet are the seed's (`UserId`, `TimeStamp`, ...); Python
code uses snake_case attributes with those names as aliases.

Decisions the seed left open:
- `TimeStamp` is ISO 8601 with a time zone (`2026-11-27T10:15:00Z`, `...+03:00`); a time without a
  zone is refused rather than guessed. It is stored normalised to UTC with microseconds and `Z`.
- `Discount` and `ItemDiscount` are fractions of the price (0.15 = 15 % off), 0 <= d <= 1.
- Prices are non-negative finite numbers in one currency; `ItemCount` is a positive integer.
- `TotalPrice` must equal the sum of `ItemCount * ItemPrice * (1 - ItemDiscount)` over the lines,
  within 0.01 per line (each line may be rounded to cents by the sender).
- Ids (`UserId`, `SessionId`, `OrderId`, `ProductId`) are 1-64 visible characters of Unicode 14.0
  (a table pinned in `app.core.identifier_chars`, so every Python and the JVM agree) with spaces
  between them, and JSON strings only (a number is not an id). They are normalised to Unicode NFC
  on input: what Kafka, MongoDB and the lake hold, and what is counted, is the NFC form, so a name
  typed as `e` + combining accent and as `é` is one name. The 64 holds as sent and in NFC.
- A record's identity is its canonical form (`canonical_wire`, `canonical_json`): NFC ids, times
  in UTC, one zero (-0.0 is 0.0), keys sorted; the same event however a client spells it. A client
  may name an event itself with an `Idempotency-Key` (`idempotency_key`), which is then its
  identity: two real, identical events are two, and a retry with the same key is one.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from app.core.identifier_chars import UNICODE_VERSION, VISIBLE_RANGES

TOTAL_TOLERANCE_PER_LINE = 0.01


class EventName(StrEnum):
    PAGE_VISITED = "PageVisited"
    CHECKED_PRODUCT_REVIEWS = "CheckedProductReviews"
    ADDED_BASKET = "AddedBasket"


class PaymentType(StrEnum):
    CREDIT_CARD = "CreditCard"
    DEBIT_CARD = "DebitCard"
    PAYPAL = "PayPal"
    BANK_TRANSFER = "BankTransfer"
    CASH_ON_DELIVERY = "CashOnDelivery"


_UNIX_TIME = re.compile(r"\s*[-+]?\d+(\.\d*)?\s*")


def _refuse_unix_time(value: object) -> object:
    # pydantic reads numbers, and strings of digits such as "0", as Unix time; the contract is
    # an ISO 8601 text with a zone, so those are refused rather than guessed.
    # (A text with ":" cannot match the pattern: the test that spares ISO texts the regex.)
    if isinstance(value, int | float) or (
        isinstance(value, str) and ":" not in value and _UNIX_TIME.fullmatch(value)
    ):
        raise ValueError("must be an ISO 8601 date-time with a zone, e.g. 2026-11-27T10:15:00Z")
    return value


def _require_zone(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must include a time zone, e.g. 2026-11-27T10:15:00Z or +03:00")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # e.g. 0001-01-01T00:00:00+03:00: in UTC it would fall before year 1.
        raise ValueError("is out of range once converted to UTC") from None


def format_timestamp(value: datetime) -> str:
    """Canonical wire form of a timestamp: UTC, microseconds, `Z`."""
    # isoformat, unlike strftime("%Y"), zero-pads years below 1000 (and is faster).
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    BeforeValidator(_refuse_unix_time),
    AfterValidator(_require_zone),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
]


@dataclass(frozen=True)
class TextPattern:
    """A rule on text for checkers that cannot run Python (the Spark stream): valid values match
    `pattern` (a Java regular expression); `message` says the rule."""

    pattern: str
    message: str


def _class_item(first: int, last: int) -> str:
    # Literal characters, ASCII punctuation escaped: Python's `re` and Java's Pattern read them
    # alike (their escapes for code points above U+FFFF differ).
    def literal(code_point: int) -> str:
        char = chr(code_point)
        return "\\" + char if char.isascii() and not char.isalnum() else char

    return literal(first) if first == last else f"{literal(first)}-{literal(last)}"


def _nested_class(items: list[str]) -> str:
    # Java tests the parts of a class through a chain of calls as long as the class (measured:
    # 700 ranges made the stream's checks 20 times slower than Java's own categories); halves
    # nested in halves keep the chain to log2(700) = 10 calls. Python's `re` has no nested
    # classes, and needs none: it looks characters up in a table.
    if len(items) <= 2:
        return "[" + "".join(items) + "]"
    middle = len(items) // 2
    return "[" + _nested_class(items[:middle]) + _nested_class(items[middle:]) + "]"


# Visible characters of the pinned Unicode version (`app.core.identifier_chars`), and spaces
# between them: first and last not a space. Possessive, so a long refused value costs one pass.
_VISIBLE = [_class_item(first, last) for first, last in VISIBLE_RANGES]
_IDENTIFIER = re.compile("(?! )[ " + "".join(_VISIBLE) + "]++(?<! )")

IDENTIFIER_RULE = TextPattern(
    # The same rule as `_IDENTIFIER` for Java (the Spark stream): \A and \z, as `fullmatch`
    # (Java's $ would also accept a line terminator at the end).
    pattern=r"\A(?! )[ " + _nested_class(_VISIBLE) + r"]++(?<! )\z",
    message=(
        "must be printable text: letters of any script, digits, punctuation, symbols and spaces "
        f"between them (the visible characters of Unicode {UNICODE_VERSION}); no control or "
        "invisible characters, no leading or trailing space"
    ),
)


@dataclass(frozen=True)
class NormalForm:
    """Text is stored in this Unicode normal form; its length limit holds as sent and as stored
    (a checker that cannot run Python, the Spark stream, normalises and checks it alike)."""

    form: Literal["NFC"]
    max_length: int
    message: str


IDENTIFIER_MAX_LENGTH = 64
IDENTIFIER_FORM = NormalForm(
    "NFC",
    IDENTIFIER_MAX_LENGTH,
    f"must have at most {IDENTIFIER_MAX_LENGTH} characters once in Unicode NFC",
)


def _canonical_identifier(value: str) -> str:
    """The id in NFC, or ValueError: the character rule, then the length once normalised.

    One call per id of every request. The rule is checked on the text as sent: the table is
    closed under normalisation (see scripts/gen_identifier_chars.py), so the verdict is the
    NFC form's, whichever Unicode version normalises."""
    if value.isascii():
        # The common case, at half the regular expression's cost: ASCII text is NFC, and its
        # printable characters (the space and U+0021-U+007E) are the same in every version.
        if not value.isprintable() or value[0] == " " or value[-1] == " ":
            raise ValueError(IDENTIFIER_RULE.message)
        return value
    if _IDENTIFIER.fullmatch(value) is None:
        raise ValueError(IDENTIFIER_RULE.message)
    normal = unicodedata.normalize("NFC", value)  # the same object when already NFC
    if normal is not value and len(normal) > IDENTIFIER_FORM.max_length:
        raise ValueError(IDENTIFIER_FORM.message)
    return normal


# Shop ids come from many systems (e-mail addresses, Turkish names, `$`-prefixed codes): any
# printable Unicode is accepted, stored in NFC. Stores keep them as values only (never as field
# names or paths).
Identifier = Annotated[
    str,
    Field(min_length=1, max_length=IDENTIFIER_MAX_LENGTH),
    AfterValidator(_canonical_identifier),
    IDENTIFIER_RULE,
    IDENTIFIER_FORM,
]
Money = Annotated[float, Field(ge=0, le=1_000_000_000, allow_inf_nan=False, strict=True)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, strict=True)]


class Record(BaseModel):
    """Base of every wire record: seed names as aliases, unknown fields refused."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, frozen=True, str_strip_whitespace=False
    )

    def to_json_bytes(self) -> bytes:
        """The record exactly as it is stored in Kafka."""
        # The serializer's own bytes: model_dump_json's str and its encoding cost 30 % more.
        return self.__pydantic_serializer__.to_json(self, by_alias=True)

    def to_wire(self) -> dict[str, Any]:
        """JSON-compatible dict with the seed's field names."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        return data


class EventAttributes(Record):
    product_id: Identifier = Field(alias="ProductId")
    price: Money = Field(alias="Price")
    discount: Fraction = Field(alias="Discount")


class UserEvent(Record):
    """One user action, sent with `PUT /SendEvent` to topic `UserEvents`."""

    user_id: Identifier = Field(alias="UserId")
    session_id: Identifier = Field(alias="SessionId")
    event_name: EventName = Field(alias="EventName")
    timestamp: Timestamp = Field(alias="TimeStamp")
    attributes: EventAttributes = Field(alias="Attributes")


class PurchasedProduct(Record):
    product_id: Identifier = Field(alias="ProductId")
    item_count: int = Field(alias="ItemCount", ge=1, le=100_000, strict=True)
    item_price: Money = Field(alias="ItemPrice")
    item_discount: Fraction = Field(alias="ItemDiscount")

    @property
    def line_total(self) -> float:
        return self.item_count * self.item_price * (1 - self.item_discount)


class Purchase(Record):
    """One order, sent in the array of `POST /PurchasedItems` to topic `PurchasedItem`."""

    session_id: Identifier = Field(alias="SessionId")
    timestamp: Timestamp = Field(alias="TimeStamp")
    user_id: Identifier = Field(alias="UserId")
    total_price: Money = Field(alias="TotalPrice")
    order_id: Identifier = Field(alias="OrderId")
    products: list[PurchasedProduct] = Field(alias="Products", min_length=1, max_length=1000)
    payment_type: PaymentType = Field(alias="PaymentType")

    @model_validator(mode="after")
    def _total_matches_lines(self) -> Purchase:
        expected = sum(line.line_total for line in self.products)
        tolerance = TOTAL_TOLERANCE_PER_LINE * len(self.products) + 1e-9
        if abs(self.total_price - expected) > tolerance:
            raise ValueError(
                f"TotalPrice {self.total_price} does not match the sum of the product lines "
                f"({expected:.2f}: ItemCount * ItemPrice * (1 - ItemDiscount)); "
                f"allowed difference is {TOTAL_TOLERANCE_PER_LINE} per line"
            )
        return self


def order_total(products: list[PurchasedProduct]) -> float:
    """`TotalPrice` of an order as the generator and the docs compute it: rounded to cents."""
    return round(sum(line.line_total for line in products), 2)


def _one_zero(value: Any) -> Any:
    if isinstance(value, float):
        return value + 0.0  # -0.0 + 0.0 is 0.0
    if isinstance(value, dict):
        return {key: _one_zero(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_one_zero(item) for item in value]
    return value


def canonical_wire(record: Record) -> dict[str, Any]:
    """The record's wire form with one spelling per value: ids in NFC (validation made them so),
    times in UTC with microseconds (`format_timestamp`), and zero as 0.0, never -0.0."""
    wire: dict[str, Any] = _one_zero(record.to_wire())
    return wire


def canonical_json(wire: dict[str, Any]) -> bytes:
    """The canonical bytes of a wire form from `canonical_wire`: what a record's identity is
    computed from. The lab's own serializer, not pydantic's: keys sorted, no spaces, UTF-8, and
    numbers as Python writes them (the shortest text that reads back as the same float), so the
    bytes depend on the values alone, not on the model's field order or a library's version."""
    text = json.dumps(
        wire, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return text.encode()


IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX_LENGTH = 255


def idempotency_key(value: str) -> str:
    """A client's `Idempotency-Key` (HTTP header, then Kafka header), or ValueError saying why
    it is not one: 1 to 255 printable ASCII characters, e.g. a UUID."""
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX_LENGTH:
        raise ValueError(
            f"must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} characters long, not {len(value)}"
        )
    if not (value.isascii() and value.isprintable()):
        raise ValueError("must hold printable ASCII characters only (space to ~), e.g. a UUID")
    return value


def parse_json_object(raw: bytes | str | None) -> dict[str, Any]:
    """Decode a Kafka value into a JSON object, or raise ValueError saying why not."""
    if raw is None:
        raise ValueError("empty message value (tombstone)")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object but {type(value).__name__}")
    return value
