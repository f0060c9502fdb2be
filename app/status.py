"""`task status`: the whole lab at a glance.

Services and their mode, the end offset of each topic, the drain group's lag (and the unread
offsets Kafka's retention deleted or is about to delete), each partition's in-sync replicas,
MongoDB counts, the offsets the drain found lost, Parquet files in the lake, its orders and
conflicting versions, the records the stream has not read that retention deletes soon, and rows
in `repeat_purchases`. Each probe fails on its own: a service that is down shows as such instead of
stopping the report.
"""

from __future__ import annotations

from collections.abc import Callable

from app.core.config import Settings, get_settings
from app.core.logs import setup_logging
from app.core.topics import partition_replicas, topic_ends
from app.figures import committed_orders, lake_prefix, mongo_documents, repeat_purchases_rows
from app.infra.report import status_rows
from app.lake.gaps import report as lake_gaps
from app.lake.gaps import retention_warnings


def topic_offsets(settings: Settings) -> list[str]:
    """End offset per topic, and the drain group's lag on `UserEvents`, with a line per
    partition whose unread records retention deleted or is about to delete."""
    lines = []
    for end in topic_ends(settings):
        if not end.partitions:
            lines.append(f"topic {end.topic}: missing (run `task infra-up`)")
            continue
        line = f"topic {end.topic}: {end.records} records in {end.partitions} partitions"
        if end.drain_lag is not None:
            line += f"; drain group {settings.drain_group_id!r} lag {end.drain_lag}"
        lines.append(line)
        lines += [f"  {warning}" for warning in end.retention_lines()]
    return lines


def stream_retention(settings: Settings) -> list[str]:
    """A line per partition whose records the stream has not read Kafka's retention deletes
    soon (none while the stream keeps up)."""
    return [f"stream: {line}" for line in retention_warnings(settings)]


def drain_gaps(settings: Settings) -> list[str]:
    """The latest offsets the drain found lost (retention, lost data), as it reported them."""
    from app.core.clients import mongo_client
    from app.pipeline.store import EventStore

    client = mongo_client(settings, timeout_ms=3000)
    try:
        store = EventStore.connect(settings, client)
        return [f"drain: {line}" for line in store.recorded_gap_lines(settings.topic_user_events)]
    finally:
        client.close()


def partition_health(settings: Settings) -> list[str]:
    """Each partition's leader and in-sync replicas, and how many are under-replicated (a
    replica behind or on a broker that is down)."""
    partitions = partition_replicas(settings)
    under = [p for p in partitions if p.under_replicated]
    lines = [
        f"kafka partitions: {len(under)} of {len(partitions)} under-replicated"
        + (" (a broker is down or catching up: `task infra-status`)" if under else "")
    ]
    for p in partitions:
        lines.append(
            f"  {p.topic}[{p.partition}]: leader {p.leader}, replicas {p.replicas}, "
            f"in sync {p.in_sync}" + (" UNDER-REPLICATED" if p.under_replicated else "")
        )
    return lines


def mongo_counts(settings: Settings) -> list[str]:
    from app.core.clients import mongo_client
    from app.pipeline.store import EventStore

    client = mongo_client(settings, timeout_ms=3000)
    try:
        documents = mongo_documents(EventStore.connect(settings, client))
    finally:
        client.close()
    return [
        f"mongo {settings.mongo_database}.{name}: {count} documents"
        for name, count in documents.items()
    ]


def lake_files(settings: Settings) -> list[str]:
    lines = []
    for prefix in (settings.s3_purchases_prefix, settings.s3_quarantine_prefix):
        lake = lake_prefix(settings, prefix)
        lines.append(f"lake {lake.url}: {lake.files} Parquet files, {lake.bytes / 2**20:.1f} MiB")
    return lines


def lake_orders(settings: Settings) -> list[str]:
    """Orders in the lake (committed files only), re-deliveries, and conflicting `OrderId`s."""
    from app.lake.sink_log import committed_files

    files = committed_files(settings, settings.purchases_url)
    if not files:
        return ["lake orders: none committed yet"]
    orders = committed_orders(settings, files)
    line = f"lake orders: {orders.rows} rows, {orders.order_ids} OrderIds"
    conflicts = orders.conflicts
    if not conflicts:
        return [line + ", no conflicting versions"]
    shown = ", ".join(
        f"{order_id} ({conflict.versions} versions; counted: partition "
        f"{conflict.counted.partition} offset {conflict.counted.offset})"
        for order_id, conflict in list(conflicts.items())[:5]
    )
    more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
    return [
        line,
        f"lake orders: CONFLICT: {len(conflicts)} OrderIds arrived with different content; all "
        f"versions kept, each OrderId counted once as its latest version: {shown}{more}",
    ]


def table_rows(settings: Settings) -> list[str]:
    from app.core.clients import postgres_connection

    conn = postgres_connection(settings)
    try:
        with conn.cursor() as cur:
            table = repeat_purchases_rows(settings, cur)
    finally:
        conn.close()
    if table.rows is None:
        return [f"postgres {table.table}: no table yet"]
    written = f", written {table.written}" if table.written else ""
    return [f"postgres {settings.postgres_database}.{table.table}: {table.rows} rows{written}"]


def report(settings: Settings) -> list[str]:
    lines = [
        f"service {row['service']}: {row['state']} ({row['mode']})" for row in status_rows(settings)
    ]
    probes: list[tuple[str, Callable[[Settings], list[str]]]] = [
        ("Kafka", topic_offsets),
        ("Kafka", partition_health),
        ("MongoDB", mongo_counts),
        ("MongoDB", drain_gaps),
        ("S3", lake_files),
        ("S3", lake_orders),
        ("S3", lake_gaps),
        ("Kafka", stream_retention),
        ("PostgreSQL", table_rows),
    ]
    for name, probe in probes:
        try:
            lines += probe(settings)
        except Exception as exc:  # a down service is a line in the report, not a crash
            lines.append(f"{name}: unreachable ({type(exc).__name__}: {exc})")
    return lines


def main() -> None:
    setup_logging("status", get_settings())
    for line in report(get_settings()):
        print(line)


if __name__ == "__main__":
    main()
