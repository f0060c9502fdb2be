"""From an HTTP request to validated records: content type, size limits, JSON, the contract.

A request is all-or-nothing: any invalid record refuses the whole request, so nothing of it is
stored. The checks run cheapest first: the `Idempotency-Key` header of `PUT /SendEvent` (400),
content type (415), declared size (413), streamed size (413) within the body deadline (408), JSON
syntax (400), array length (413), then the record models (422) and duplicate `OrderId`s within
the request (422).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect, Request

from app.api.errors import ApiError, FieldError, field_errors, invalid_request
from app.schemas import IDEMPOTENCY_KEY_HEADER, Purchase, UserEvent, idempotency_key

JSON_MEDIA_TYPE = "application/json"

# What a body holds: one event (`PUT /SendEvent`) or an array of orders (`POST /PurchasedItems`).
BodyKind = Literal["event", "purchases"]
# `(key, value)` per record: `UserId` and the record's JSON (ids in NFC), as stored in Kafka.
KafkaRecords = list[tuple[bytes, bytes]]
# Kafka headers of a request's records: the client's `Idempotency-Key`, when it sent one.
KafkaHeaders = Sequence[tuple[str, bytes]]


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` (any parameters, e.g. charset) or a `+json` type."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == JSON_MEDIA_TYPE or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than {limit} bytes (API_MAX_BODY_BYTES). "
        "Send fewer records per request.",
    )


def idempotency_headers(request: Request) -> KafkaHeaders:
    """The client's `Idempotency-Key` as Kafka headers (none when it sent none), or a 400."""
    values = request.headers.getlist(IDEMPOTENCY_KEY_HEADER)
    if not values:
        return []
    if len(values) > 1:
        problem = f"was sent {len(values)} times"
    else:
        try:
            # Starlette reads header bytes as Latin-1: a byte beyond ASCII is refused by the rule.
            return [(IDEMPOTENCY_KEY_HEADER, idempotency_key(values[0]).encode())]
        except ValueError as error:
            problem = str(error)
    raise ApiError(
        400,
        f"The {IDEMPOTENCY_KEY_HEADER} header {problem}. Send one key per event, the same on "
        "every retry of it, or leave the header out. Nothing was stored.",
    )


class ClientGone(Exception):
    """The client closed the connection before its request body had arrived."""


async def read_json_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The body of a JSON request, refused early when it is not JSON, too large or too slow."""
    content_type = request.headers.get("content-type")
    if not is_json_media_type(content_type):
        raise ApiError(
            415,
            f"Content-Type must be {JSON_MEDIA_TYPE}, not {content_type or 'missing'}. "
            f"Send the records as JSON with `Content-Type: {JSON_MEDIA_TYPE}`.",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    # Counted while streaming too: chunked requests declare no length.
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            f"The request body did not arrive within {timeout:g} s "
            "(API_BODY_TIMEOUT_SECONDS); nothing was stored. Send it again, or fewer records.",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise ClientGone from None
    return b"".join(chunks)


def _refusal(exc: ValidationError, max_batch: int) -> ApiError:
    """Turn pydantic's verdict into the answer: 400 for broken JSON, 413 for too many orders,
    else 422 naming fields. Its list of errors is built once: it can hold one per JSON key."""
    errors = exc.errors(include_url=False, include_input=False)
    if errors[0]["type"] == "json_invalid":
        return ApiError(
            400,
            f"The body is not valid JSON ({errors[0]['msg'].removeprefix('Invalid JSON: ')}). "
            "Nothing was stored.",
        )
    # An over-long array is refused as too large even if its records are also invalid.
    for error in errors:
        if error["type"] == "too_long" and error["loc"] == ():
            return ApiError(
                413,
                f"The array has {error['ctx']['actual_length']} orders; at most "
                f"{max_batch} are accepted per request (API_MAX_BATCH). "
                "Split it into smaller requests.",
            )
    return invalid_request(field_errors(errors), len(errors))


class RecordParser:
    """Validates request bodies against the record models, within the configured limits."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._event = TypeAdapter(UserEvent)
        self._purchases = TypeAdapter(
            Annotated[list[Purchase], Field(min_length=1, max_length=max_batch)]
        )

    def event(self, body: bytes) -> UserEvent:
        """One `UserEvent` object, or ApiError (400/422)."""
        try:
            return self._event.validate_json(body)
        except ValidationError as exc:
            raise _refusal(exc, self.max_batch) from None

    def purchases(self, body: bytes) -> list[Purchase]:
        """A non-empty array of orders with distinct `OrderId`s, or ApiError (400/413/422)."""
        try:
            orders = self._purchases.validate_json(body)
        except ValidationError as exc:
            raise _refusal(exc, self.max_batch) from None
        duplicates = duplicate_order_ids(orders)
        if duplicates:
            raise invalid_request(duplicates)
        return orders

    def records(self, kind: BodyKind, body: bytes) -> KafkaRecords:
        """The body's records as Kafka stores them, or ApiError."""
        parsed = [self.event(body)] if kind == "event" else self.purchases(body)
        return [(record.user_id.encode(), record.to_json_bytes()) for record in parsed]


def duplicate_order_ids(orders: list[Purchase]) -> list[FieldError]:
    """One error per order whose `OrderId` already appeared earlier in the same request."""
    first_index: dict[str, int] = {}
    errors = []
    for index, order in enumerate(orders):
        seen_at = first_index.setdefault(order.order_id, index)
        if seen_at != index:
            errors.append(
                FieldError(
                    field=f"[{index}].OrderId",
                    reason=f"duplicate OrderId {order.order_id!r}, already used at index "
                    f"{seen_at} of this request",
                    type="duplicate_order_id",
                )
            )
    return errors
