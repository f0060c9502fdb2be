"""OpenAPI-driven fuzzing: whatever schemathesis sends, the API never answers 5xx.

Schemathesis reads the app's own `/openapi.json`, generates valid and invalid requests for every
operation, and checks each answer against the documentation (status codes, content types,
response schemas, invalid data refused) as well as for server errors. The app runs in-process
with its real producer on isolated topics, so a 503 would mean real Kafka trouble and fails the
test like a 500.

(Driven through hypothesis directly: schemathesis' lazy pytest fixture loader does not support
pytest 9 yet.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import BaseSchema, GenerationMode

from app.api.main import create_app
from app.core.config import Settings

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# The health checks take no input, so there is nothing invalid to generate for them.
RUNS = [
    ("PUT /SendEvent", POSITIVE),
    ("PUT /SendEvent", NEGATIVE),
    ("POST /PurchasedItems", POSITIVE),
    ("POST /PurchasedItems", NEGATIVE),
    ("GET /health", POSITIVE),
    ("GET /health/ready", POSITIVE),
]


CHECKS = schemathesis.Config.from_dict(
    {
        "checks": {
            # Invalid data must be refused the ways the API documents (413: over the batch limit).
            "negative_data_rejection": {"expected-statuses": ["400", "413", "415", "422"]},
            # Schema-valid is not always contract-valid: JSON Schema cannot say that TotalPrice
            # must match the lines or that a TimeStamp needs a zone, so those rightly get 422.
            "positive_data_acceptance": {"enabled": False},
        }
    }
)


@pytest.fixture(scope="module")
def api_schema(isolated_settings: Settings) -> BaseSchema:
    app = create_app(isolated_settings)
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=CHECKS)


def test_every_operation_is_fuzzed(api_schema: BaseSchema) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == {label for label, _ in RUNS} | {"GET /metrics"}


@pytest.mark.parametrize(("label", "mode"), RUNS, ids=[f"{label} {mode}" for label, mode in RUNS])
def test_no_request_gets_a_server_error(
    api_schema: BaseSchema, label: str, mode: GenerationMode
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate()
        assert response.status_code < 500, response.text

    check()
