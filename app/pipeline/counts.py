"""Task 2 of the DAG: keep `user_event_counts` exact, with work that follows the new batch.

Each counts document is `{UserId, EventName, EventCount, CountedUpTo}` with `_id` = the pair.
`CountedUpTo` maps a partition (of one incarnation of the topic: `<topic id>:<partition>`, so a
re-created topic whose offsets start again is counted afresh; `<topic id>:<partition>:<epoch>`
once the partition's own offsets went back) to the offset below which that
pair's events are counted, so adding a pending batch (written by the drain) counts only its
offsets at or above the mark: applying a batch twice, or two overlapping batches after a crash
and re-read, adds each event once. Batches are applied in offset order per partition (their
`_id` sorts that way), and every batch lists all of a pair's events to count in its offset range
(duplicate deliveries are left out by the drain), so no event below a mark is missed.

Every write sets one pair's absolute count and marks together, in one single-document insert or
update: a refresh interrupted anywhere leaves each pair either before or after the batches, and
the next refresh applies them again from the pending batches, which are dropped only after that.

The refresh never reads the events collection and reads and writes counts documents by `_id`
only (`EventStore` hides how), so its cost follows the pending batches and the pairs they touch,
not the history.

Refreshes may run at the same time (an operator's `airflow dags test` beside the scheduled run,
a zombie task: the DAG's `max_active_runs=1` covers neither), and each stays exact. A pair's
document is written only if nobody wrote it since it was read (`EventStore.write_counts`: a
`Version` in the update's filter; an insert that meets a duplicate key lost the same race); the
pairs that lost are read again and the same batches applied to them again, until every write
lands. Applying a batch again is harmless, so whichever refresh wrote first, each event ends
counted once; two refreshes that both apply and drop one pending batch do it once between them.
A lock would do as well only if fenced (a token checked by every write: the same filter), and
would add a lease to expire and renew; the versions need neither, cost nothing while refreshes
do not meet (the stand-in finds `_id` plus `Version` by its `_id` index; bench_drain's counts
part measures it) and cannot be stalled by a paused holder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from app.core.clients import Document, mongo_client
from app.core.config import Settings
from app.pipeline.store import EventStore

log = logging.getLogger(__name__)


@dataclass
class CountsSummary:
    """What one refresh did; small enough for an Airflow XCom."""

    batches: int = 0
    events_counted: int = 0
    pairs_written: int = 0
    new_pairs: int = 0
    # Rounds of pairs redone because another refresh wrote them first.
    retries: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_key(user_id: str, event_name: str) -> str:
    """`_id` of a counts document. EventName never contains ':', so the key is unambiguous."""
    return f"{event_name}:{user_id}"


def new_count(user_id: str, event_name: str) -> Document:
    return {
        "_id": pair_key(user_id, event_name),
        "UserId": user_id,
        "EventName": event_name,
        "EventCount": 0,
        "CountedUpTo": {},
    }


def mark_key(batch: Document) -> str:
    """The key of a pending batch's partition in `CountedUpTo`: `<topic id>:<partition>`, and
    `:<epoch>` after the partition's offsets went back (`app.pipeline.drain`)."""
    topic_id, epoch = batch.get("TopicId"), batch.get("Epoch", 0)
    key = f"{topic_id}:{batch['Partition']}" if topic_id else str(batch["Partition"])
    return f"{key}:{epoch}" if epoch else key


def apply_batches(counts: dict[str, Document], batches: Iterable[Document]) -> tuple[int, set[str]]:
    """Add the not-yet-counted events of pending `batches` (in `_id` order) to `counts`.

    `counts` maps pair keys to counts documents and is updated in place; pairs missing from it
    are new. Returns (events counted, keys of the documents that changed). Applying a batch a
    second time changes nothing.
    """
    counted = 0
    changed: set[str] = set()
    for batch in batches:
        partition = mark_key(batch)
        for pair in batch["Pairs"]:
            key = pair_key(pair["UserId"], pair["EventName"])
            document = counts.get(key)
            if document is None:
                document = counts[key] = new_count(pair["UserId"], pair["EventName"])
            mark = document["CountedUpTo"].get(partition, 0)
            fresh = [offset for offset in pair["Offsets"] if offset >= mark]
            if fresh:
                document["EventCount"] += len(fresh)
                document["CountedUpTo"][partition] = max(fresh) + 1
                counted += len(fresh)
                changed.add(key)
    return counted, changed


def _chunks(store: EventStore, max_pairs: int) -> Iterator[list[Document]]:
    """Pending batches in `_id` order, grouped so each group lists about `max_pairs` pairs."""
    chunk: list[Document] = []
    pairs = 0
    for batch in store.pending_batches():
        if chunk and pairs + batch["PairCount"] > max_pairs:
            yield chunk
            chunk, pairs = [], 0
        chunk.append(batch)
        pairs += batch["PairCount"]
    if chunk:
        yield chunk


def _only(batches: Sequence[Document], keys: set[str]) -> list[Document]:
    """`batches` with only the pairs whose key is in `keys`."""
    return [
        {
            **batch,
            "Pairs": [p for p in batch["Pairs"] if pair_key(p["UserId"], p["EventName"]) in keys],
        }
        for batch in batches
    ]


def count_batches(store: EventStore, batches: Sequence[Document], summary: CountsSummary) -> None:
    """Apply `batches` to the stored counts, writing each pair only if nobody wrote it since it
    was read; the pairs another refresh wrote first are read again and redone until written."""
    keys = {pair_key(p["UserId"], p["EventName"]) for b in batches for p in b["Pairs"]}
    todo = list(batches)
    while keys:
        counts = store.find_by_ids(store.counts, keys)
        existing = set(counts)
        before = {key: document["EventCount"] for key, document in counts.items()}
        _, changed = apply_batches(counts, todo)
        keys = store.write_counts([counts[key] for key in sorted(changed)], existing)
        # Only writes known to have landed are reported: what a lost write would have counted
        # is counted by its redo, or was by the refresh that won.
        for key in changed - keys:
            summary.events_counted += counts[key]["EventCount"] - before.get(key, 0)
            summary.pairs_written += 1
            summary.new_pairs += key not in existing
        if keys:
            summary.retries += 1
            todo = _only(batches, keys)
            log.info("%d pairs were written by another refresh meanwhile: redoing them", len(keys))


def refresh_event_counts(settings: Settings) -> CountsSummary:
    """Count the events of every pending batch into `user_event_counts`; return what was done."""
    started = time.monotonic()
    summary = CountsSummary()
    client = mongo_client(settings)
    try:
        store = EventStore.connect(settings, client)
        store.ensure_indexes()
        for batches in _chunks(store, settings.counts_batch_size):
            count_batches(store, batches, summary)
            # Dropped once their pairs are written. Applying a batch again changes nothing, so a
            # crash before this, or another refresh that applied them too, costs a little
            # repeated work, never a wrong count.
            store.drop_pending(batches)
            summary.batches += len(batches)
    finally:
        client.close()
    summary.seconds = round(time.monotonic() - started, 3)
    log.info("counts refreshed: %s", summary)
    return summary
