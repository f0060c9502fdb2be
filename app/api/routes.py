"""The API's routes: thin handlers over `BodyValidator` (validation) and `RecordProducer` (Kafka).

The routes close over the app's one `Ingest` object instead of resolving a dependency per
request: on the hot path FastAPI's dependency solving costs more than the validation. The two
ingest routes read and validate the body themselves (pydantic's JSON parser, the size limits,
415/413 before parsing), so their OpenAPI request bodies are declared explicitly from the same
record models.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.api.errors import ErrorBody
from app.api.ingest import (
    JSON_MEDIA_TYPE,
    KafkaHeaders,
    KafkaRecords,
    idempotency_headers,
    read_json_body,
)
from app.api.metrics import CONTENT_TYPE_LATEST, ApiMetrics
from app.api.producer import KafkaUnavailable, RecordProducer
from app.api.validation import BodyValidator
from app.core.config import Settings
from app.schemas import IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_MAX_LENGTH


class Ingest:
    """What the routes need, built once per app (see `app.api.main.create_app`); the producer
    and the validation workers start and stop with the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        producer: RecordProducer,
        validator: BodyValidator,
        metrics: ApiMetrics,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.validator = validator
        self.metrics = metrics

    async def publish(
        self, topic: str, records: KafkaRecords, headers: KafkaHeaders = ()
    ) -> Response:
        """Store the records in `topic`, each with `headers`; answer 200 once Kafka
        acknowledged them all."""
        try:
            await self.producer.send(topic, records, headers)
        except KafkaUnavailable as exc:
            self.metrics.produce_failures.labels(topic, exc.reason).inc()
            raise
        self.metrics.records_produced.labels(topic).inc(len(records))
        return Response(
            Accepted(topic=topic, records=len(records)).model_dump_json(),
            media_type=JSON_MEDIA_TYPE,
        )


class Accepted(BaseModel):
    """Every record of the request is stored in Kafka (acknowledged by all in-sync replicas)."""

    topic: str
    records: int


class Health(BaseModel):
    status: Literal["ok", "ready", "not ready"]
    kafka: Literal["ready", "unavailable"]
    detail: str | None = None


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


INGEST_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("The body is not valid JSON, or the Idempotency-Key header is not a valid key."),
    408: _error("The body did not arrive within API_BODY_TIMEOUT_SECONDS of the headers."),
    413: _error("Body over API_MAX_BODY_BYTES, or more orders than API_MAX_BATCH."),
    415: _error("Content-Type is not application/json."),
    422: _error("A record breaks the contract; `errors` names each field and the reason."),
    503: _error(
        "Kafka did not acknowledge every record within API_PRODUCE_TIMEOUT_SECONDS (or, rarely, "
        "a validation worker died); retry after the `Retry-After` seconds. Some records may "
        "have been stored (at-least-once)."
    ),
}

# Shown at /docs; the API tests start from them, so the documented examples stay valid.
EVENT_EXAMPLE = {
    "UserId": "ayse.yilmaz-1042",
    "SessionId": "5b0f7c2e-9f0a-4c55-8f0e-1d2a3b4c5d6e",
    "EventName": "AddedBasket",
    "TimeStamp": "2026-11-27T10:15:00Z",
    "Attributes": {"ProductId": "P-0042", "Price": 249.9, "Discount": 0.15},
}
PURCHASE_EXAMPLE = {
    "SessionId": "5b0f7c2e-9f0a-4c55-8f0e-1d2a3b4c5d6e",
    "TimeStamp": "2026-11-27T10:17:30+03:00",
    "UserId": "ayse.yilmaz-1042",
    "TotalPrice": 474.83,
    "OrderId": "9d7e3c1a-0b2f-4e8d-a6c5-3f1e2d4b5a69",
    "Products": [
        {"ProductId": "P-0042", "ItemCount": 2, "ItemPrice": 249.9, "ItemDiscount": 0.15},
        {"ProductId": "P-0007", "ItemCount": 1, "ItemPrice": 50.0, "ItemDiscount": 0.0},
    ],
    "PaymentType": "CreditCard",
}


def _json_body(schema: dict[str, Any], examples: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {JSON_MEDIA_TYPE: {"schema": schema, "examples": examples}},
        }
    }


IDEMPOTENCY_KEY_PARAMETER = {
    "name": IDEMPOTENCY_KEY_HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Your name for this event, e.g. a UUID, sent again unchanged on every retry of it: the "
        "event is then stored and counted once per key (the first one stored wins), and two "
        "events with the same content but different keys are two. Without it an event is "
        "identified by its content, so identical events are one."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH,
        "pattern": "^[ -~]+$",
    },
}


def ingest_router(ingest: Ingest) -> APIRouter:
    """The routes, with the configured limits shown in their OpenAPI documentation."""
    settings = ingest.settings
    router = APIRouter()

    @router.put(
        "/SendEvent",
        summary="Store one user event in topic UserEvents",
        response_model=Accepted,
        responses=INGEST_ERRORS,
        openapi_extra={
            **_json_body(
                {"$ref": "#/components/schemas/UserEvent"},
                {"added to basket": {"value": EVENT_EXAMPLE}},
            ),
            "parameters": [IDEMPOTENCY_KEY_PARAMETER],
        },
    )
    async def send_event(request: Request) -> Response:
        headers = idempotency_headers(request)
        body = await read_json_body(
            request, settings.api_max_body_bytes, settings.api_body_timeout_seconds
        )
        records = await ingest.validator.records("event", body)
        return await ingest.publish(settings.topic_user_events, records, headers)

    @router.post(
        "/PurchasedItems",
        summary="Store a batch of orders in topic PurchasedItem, one Kafka record per order",
        response_model=Accepted,
        responses=INGEST_ERRORS,
        openapi_extra=_json_body(
            {
                "type": "array",
                "items": {"$ref": "#/components/schemas/Purchase"},
                "minItems": 1,
                "maxItems": settings.api_max_batch,
            },
            {"one order": {"value": [PURCHASE_EXAMPLE]}},
        ),
    )
    async def purchased_items(request: Request) -> Response:
        body = await read_json_body(
            request, settings.api_max_body_bytes, settings.api_body_timeout_seconds
        )
        records = await ingest.validator.records("purchases", body)
        return await ingest.publish(settings.topic_purchased_item, records)

    @router.get("/health", summary="Liveness (always 200) and Kafka readiness")
    async def health() -> Health:
        kafka_problem = await _kafka_problem(ingest)
        return Health(
            status="ok", kafka="unavailable" if kafka_problem else "ready", detail=kafka_problem
        )

    @router.get(
        "/health/ready",
        summary="Readiness: 200 when Kafka answers and both topics exist, else 503",
        responses={503: {"model": Health, "description": "Kafka is not usable yet."}},
    )
    async def ready(response: Response) -> Health:
        kafka_problem = await _kafka_problem(ingest)
        if kafka_problem:
            response.status_code = 503
            return Health(status="not ready", kafka="unavailable", detail=kafka_problem)
        return Health(status="ready", kafka="ready")

    @router.get(
        "/metrics",
        summary="Prometheus metrics (text format)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        return Response(ingest.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def ingest_routes(router: APIRouter) -> list[APIRoute]:
    """The two routes that store records: the hot path (see `app.api.fast_path`)."""
    return [
        route
        for route in router.routes
        if isinstance(route, APIRoute) and route.path in ("/SendEvent", "/PurchasedItems")
    ]


async def _kafka_problem(ingest: Ingest) -> str | None:
    """Why Kafka cannot take records now, or None when it can."""
    topics = [ingest.settings.topic_user_events, ingest.settings.topic_purchased_item]
    try:
        missing = await ingest.producer.missing_topics(topics)
    except KafkaUnavailable as exc:
        return str(exc)
    if missing:
        return f"Kafka topic(s) {', '.join(missing)} do not exist: run `task infra-up`."
    return None
