"""Sends a tick's sessions to the ingest API and keeps count of every record's fate.

Events go one request each through `PUT /SendEvent`; a session's events are sent in order, many
sessions at once (at most `concurrency` requests in flight). Orders go afterwards, batched through
`POST /PurchasedItems`. A 503, 502, 504, 429 or a connection problem is retried with exponential
backoff (honouring `Retry-After`) for up to `retry_seconds`; records that still fail are counted
as failed and reported, a 4xx is counted as rejected and reported with the API's reason. So
every record built ends in exactly one of: accepted, rejected, failed, or (when the run is
stopped) interrupted mid-request or never sent.

Each record is serialised once (pydantic's serializer, in Rust): the same bytes make the request
body and the record file's line. The client is `http_client.HttpClient`, a few tens of µs of CPU
per request where aiohttp took about 200 (and httpx's async client 4-5 ms).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

from app.generator.crowd import Session
from app.generator.http_client import HttpClient, RequestFailed
from app.schemas import Purchase, UserEvent

RETRIED_STATUSES = frozenset({429, 502, 503, 504})
FIRST_BACKOFF_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 5.0


@dataclass
class Tally:
    """Counts of records (not requests), by outcome."""

    generated: int = 0
    sent: int = 0  # records whose first request went out
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    in_flight: int = 0  # sent, no final answer yet (at the end: interrupted mid-request)
    retries: int = 0  # requests repeated
    problems: Counter[str] = field(default_factory=Counter)  # requests, by problem

    @property
    def unsent(self) -> int:
        return self.generated - self.sent

    def __add__(self, other: Tally) -> Tally:
        """Both processes' counts together."""
        summed = Tally(problems=self.problems + other.problems)
        for name in COUNTS:
            setattr(summed, name, getattr(self, name) + getattr(other, name))
        return summed


COUNTS = ("generated", "sent", "accepted", "rejected", "failed", "in_flight", "retries")


class Sender:
    """Posts records to the API with bounded concurrency, retries and an exact tally."""

    def __init__(
        self,
        client: HttpClient,
        *,
        concurrency: int,
        max_batch: int,
        retry_seconds: float,
        report: Callable[[str], None],
        record_file: IO[bytes] | None = None,
    ) -> None:
        self.client = client
        self.max_batch = max_batch
        self.retry_seconds = retry_seconds
        self.report = report
        self.record_file = record_file
        self.tally = Tally()
        self._slots = asyncio.Semaphore(concurrency)

    async def send_tick(self, sessions: Sequence[Session]) -> None:
        """Send every event of the tick (sessions side by side), then its orders in batches."""
        orders = [order for session in sessions for order in session.purchases]
        self.tally.generated += sum(len(s.events) for s in sessions) + len(orders)
        # Task groups, unlike gather, wait for every request to settle when the run is stopped,
        # so the tally is final when the summary is printed.
        async with asyncio.TaskGroup() as group:
            for session in sessions:
                group.create_task(self._send_session(session))
        async with asyncio.TaskGroup() as group:
            for start in range(0, len(orders), self.max_batch):
                batch = orders[start : start + self.max_batch]
                group.create_task(self._deliver("POST", "/PurchasedItems", batch))

    async def _send_session(self, session: Session) -> None:
        for event in session.events:  # in funnel order
            await self._deliver("PUT", "/SendEvent", [event])

    async def _deliver(
        self, method: str, path: str, records: list[UserEvent] | list[Purchase]
    ) -> None:
        count = len(records)
        serialised = [record.to_json_bytes() for record in records]
        body = serialised[0] if path == "/SendEvent" else b"[" + b",".join(serialised) + b"]"
        outcome = await self._request_with_retries(method, path, body, count)
        self.tally.in_flight -= count
        if outcome == "accepted":
            self.tally.accepted += count
            self._record(path, serialised)
        elif outcome == "rejected":
            self.tally.rejected += count
        else:
            self.tally.failed += count

    async def _request_with_retries(self, method: str, path: str, body: bytes, count: int) -> str:
        """`accepted`, `rejected` (4xx, 500) or `failed` (still unavailable after retrying)."""
        deadline = time.monotonic() + self.retry_seconds
        backoff = FIRST_BACKOFF_SECONDS
        first = True
        while True:
            wait = backoff
            try:
                async with self._slots:
                    if first:  # records waiting for a free slot are not sent yet
                        first = False
                        self.tally.sent += count
                        self.tally.in_flight += count
                    answer = await self.client.request(method, path, body)
            except RequestFailed as exc:
                problem = f"{path}: cannot reach the API ({exc})"
            else:
                if 200 <= answer.status < 300:
                    return "accepted"
                problem = f"{path}: {answer.status} {_reason(answer.body)}"
                if answer.status not in RETRIED_STATUSES:
                    self._problem(f"rejected by {problem}")
                    return "rejected"
                wait = max(wait, _retry_after(answer.retry_after))
            if time.monotonic() + wait > deadline:
                self._problem(f"failed after retrying for {self.retry_seconds:g} s: {problem}")
                return "failed"
            self.tally.retries += 1
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _problem(self, problem: str) -> None:
        """Count a request's problem; say it the first time (the summary has the counts)."""
        if problem not in self.tally.problems:
            self.report(problem)
        self.tally.problems[problem] += 1

    def _record(self, path: str, serialised: Sequence[bytes]) -> None:
        """Append the acknowledged records (as sent) to the record file, one JSON line each."""
        if self.record_file is None:
            return
        kind = b"event" if path == "/SendEvent" else b"purchase"
        self.record_file.write(
            b"".join(
                b'{"kind":"' + kind + b'","record":' + record + b"}\n" for record in serialised
            )
        )


def _reason(answer: bytes) -> str:
    """The API's `detail` (it names the first invalid field), else the start of the body."""
    text = answer.decode(errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text[:200]
    if not isinstance(body, dict):
        return text[:200]
    reason = str(body.get("detail", ""))
    return reason or text[:200]


def _retry_after(value: str) -> float:
    return min(float(value), MAX_BACKOFF_SECONDS) if value.isdigit() else 0.0
