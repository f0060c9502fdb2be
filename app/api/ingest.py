"""From an HTTP request to validated records: content type, size limits, JSON, the contract.

A request is all-or-nothing: any invalid record refuses the whole request, so nothing of it is
stored. The checks run cheapest first: content type (415), declared size (413), streamed size
(413), JSON syntax (400), array length (413), then the record models (422) and duplicate
`OrderId`s within the request (422).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError
from starlette.requests import Request

from app.api.errors import ApiError, FieldError, field_errors, invalid_request
from app.core.config import Settings
from app.schemas import Purchase, UserEvent

JSON_MEDIA_TYPE = "application/json"


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


async def read_json_body(request: Request, max_bytes: int) -> bytes:
    """The body of a JSON request, refused early when it is not JSON or too large."""
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
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _refusal(exc: ValidationError) -> ApiError:
    """Turn pydantic's verdict into the answer: 400 for broken JSON, else 422 naming fields."""
    errors = exc.errors(include_url=False, include_input=False)
    if errors[0]["type"] == "json_invalid":
        return ApiError(
            400,
            f"The body is not valid JSON ({errors[0]['msg'].removeprefix('Invalid JSON: ')}). "
            "Nothing was stored.",
        )
    return invalid_request(field_errors(exc), exc.error_count())


class RecordParser:
    """Validates request bodies against the record models, within the configured limits."""

    def __init__(self, settings: Settings) -> None:
        self.max_batch = settings.api_max_batch
        self._event = TypeAdapter(UserEvent)
        self._purchases = TypeAdapter(
            Annotated[list[Purchase], Field(min_length=1, max_length=settings.api_max_batch)]
        )

    def event(self, body: bytes) -> UserEvent:
        """One `UserEvent` object, or ApiError (400/422)."""
        try:
            return self._event.validate_json(body)
        except ValidationError as exc:
            raise _refusal(exc) from None

    def purchases(self, body: bytes) -> list[Purchase]:
        """A non-empty array of orders with distinct `OrderId`s, or ApiError (400/413/422)."""
        try:
            orders = self._purchases.validate_json(body)
        except ValidationError as exc:
            # An over-long array is refused as too large even if its records are also invalid.
            for error in exc.errors(include_url=False, include_input=False):
                if error["type"] == "too_long" and error["loc"] == ():
                    raise ApiError(
                        413,
                        f"The array has {error['ctx']['actual_length']} orders; at most "
                        f"{self.max_batch} are accepted per request (API_MAX_BATCH). "
                        "Split it into smaller requests.",
                    ) from None
            raise _refusal(exc) from None
        duplicates = duplicate_order_ids(orders)
        if duplicates:
            raise invalid_request(duplicates)
        return orders


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
