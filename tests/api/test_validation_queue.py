"""A flood of large bodies meets a bounded line: a 503 with Retry-After, never an endless wait.

Runs the real server (`python -m app.api --no-reload`) with one validation worker, a line of two
and a one-second wait, against the lab's Kafka on this module's topics. Junk bodies of the
largest size take about a second each to refuse, so a dozen at once would keep the last one
waiting a dozen seconds (and every batch behind it) without the bounds.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from app.api.routes import PURCHASE_EXAMPLE
from app.api.validation import INLINE_BYTES
from app.core.config import Settings
from tests.api.conftest import RunningApi, running_api
from tests.api.test_stall import junk_object

QUEUE = 2
WAIT_SECONDS = 1.0
FLOOD = 12


@pytest.fixture(scope="module")
def api(isolated_settings: Settings) -> Iterator[RunningApi]:
    settings = isolated_settings.model_copy(
        update={
            "api_workers": 1,
            "api_validation_workers": 1,
            "api_validation_queue": QUEUE,
            "api_validation_wait_seconds": WAIT_SECONDS,
        }
    )
    with running_api(settings) as running:
        yield running


def large_valid_batch() -> bytes:
    """Orders enough to go to a validation worker (over INLINE_BYTES)."""
    orders: list[dict[str, object]] = []
    while len(json.dumps(orders)) <= 2 * INLINE_BYTES:
        order = copy.deepcopy(PURCHASE_EXAMPLE)
        order["OrderId"] = f"queue-{len(orders)}"
        orders.append(order)
    return json.dumps(orders).encode()


def test_a_flood_of_large_bodies_gets_503_with_retry_after_not_an_endless_wait(
    api: RunningApi,
) -> None:
    junk = junk_object(api.settings.api_max_body_bytes)

    def send(_: int) -> tuple[int, float, str | None]:
        started = time.monotonic()
        response = httpx.put(
            f"{api.url}/SendEvent",
            content=junk,
            headers={"Content-Type": "application/json"},
            timeout=120,
        )
        return response.status_code, time.monotonic() - started, response.headers.get("Retry-After")

    with concurrent.futures.ThreadPoolExecutor(FLOOD) as pool:
        answers = list(pool.map(send, range(FLOOD)))

    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) == {422, 503}, statuses
    # At most one body in the worker and QUEUE in line get a verdict; the rest are turned away.
    assert statuses.count(503) >= FLOOD - 1 - QUEUE - 1, statuses
    for status, seconds, retry_after in answers:
        if status == 503:
            assert retry_after is not None and int(retry_after) >= 1
            # Turned away at once or after the wait, not after the bodies before it.
            assert seconds < WAIT_SECONDS + 5, f"a 503 took {seconds:.1f} s"

    # The line is free again: a legitimate large batch is validated and stored.
    response = httpx.post(
        f"{api.url}/PurchasedItems",
        content=large_valid_batch(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
