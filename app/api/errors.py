"""The API's error answers: one JSON shape for every refusal.

`{"detail": "<what happened and what to do>", "errors": [{"field", "reason", "type"}]}` where
`errors` lists the invalid fields (422 only) with their path in the request body, e.g.
`Attributes.Price` or `[3].Products[0].ItemCount` (index 3 of the array).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field
from pydantic_core import ErrorDetails

# Enough to fix a request; a batch of a thousand bad records must not produce a megabyte reply.
MAX_REPORTED_ERRORS = 100


class FieldError(BaseModel):
    field: str = Field(description="Path in the body: `Attributes.Price`, `[3].OrderId`.")
    reason: str
    type: str = Field(description="Machine-readable kind, e.g. `missing`, `greater_than_equal`.")


class ErrorBody(BaseModel):
    detail: str
    errors: list[FieldError] = Field(default_factory=list)


class ApiError(Exception):
    """A refusal of the request: status code, sentence for a person, and invalid fields."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.body = ErrorBody(detail=detail, errors=list(errors))
        self.headers = headers

    def __reduce__(self) -> tuple[type[ApiError], tuple[object, ...]]:
        # Refusals travel back from the validation workers (see `app.api.validation`).
        return ApiError, (self.status_code, self.body.detail, self.body.errors, self.headers)


def field_path(loc: Sequence[int | str]) -> str:
    """`(3, "Products", 0, "ItemCount")` -> `[3].Products[0].ItemCount`; `()` -> `(body)`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "(body)"


def field_errors(errors: Sequence[ErrorDetails]) -> list[FieldError]:
    """The first `MAX_REPORTED_ERRORS` of pydantic's errors, as the answer lists them."""
    return [
        FieldError(
            field=field_path(error["loc"]),
            # pydantic prefixes the messages of our own validators with "Value error, ".
            reason=error["msg"].removeprefix("Value error, "),
            type=error["type"],
        )
        for error in errors[:MAX_REPORTED_ERRORS]
    ]


def invalid_request(errors: Sequence[FieldError], total: int | None = None) -> ApiError:
    """422 for a request that is valid JSON but breaks the record contract: `total` invalid
    fields (default: as many as `errors`), of which the first `MAX_REPORTED_ERRORS` are listed."""
    total = len(errors) if total is None else total
    errors = errors[:MAX_REPORTED_ERRORS]
    shown = "" if total <= len(errors) else f" (first {len(errors)} shown)"
    first = errors[0]
    return ApiError(
        422,
        f"{total} invalid field{'s' if total != 1 else ''}{shown}, e.g. {first.field}: "
        f"{first.reason}. Nothing from this request was stored.",
        errors,
    )
