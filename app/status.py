"""`task status`: the whole lab at a glance.

Services and their mode, the end offset of each topic, the drain group's lag, MongoDB counts,
Parquet files in the lake and rows in `repeat_purchases`. Each probe fails on its own: a service
that is down shows as such instead of stopping the report.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from app.core.config import Settings, get_settings
from app.core.kafka import admin_client, lab_topics
from app.infra.cli import status_rows


def topic_offsets(settings: Settings) -> list[str]:
    """End offset per topic, and the drain group's lag on `UserEvents`."""
    metadata = admin_client(settings).list_topics(timeout=5).topics
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.drain_group_id,
            "enable.auto.commit": False,
        }
    )
    lines = []
    try:
        for topic in lab_topics(settings):
            if topic not in metadata:
                lines.append(f"topic {topic}: missing (run `task infra-up`)")
                continue
            partitions = [TopicPartition(topic, p) for p in metadata[topic].partitions]
            ends = [consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in partitions]
            line = f"topic {topic}: {sum(ends)} records in {len(partitions)} partitions"
            if topic == settings.topic_user_events:
                committed = consumer.committed(partitions, timeout=5)
                done = sum(max(tp.offset, 0) for tp in committed)
                line += f"; drain group {settings.drain_group_id!r} lag {sum(ends) - done}"
            lines.append(line)
    finally:
        consumer.close()
    return lines


def mongo_counts(settings: Settings) -> list[str]:
    from app.pipeline.store import EventStore, mongo_client

    client = mongo_client(settings, timeout_ms=3000)
    try:
        store = EventStore.connect(settings, client)
        return [
            f"mongo {c.full_name}: {c.estimated_document_count()} documents"
            for c in (store.events, store.counts, store.quarantine)
        ]
    finally:
        client.close()


def lake_files(settings: Settings) -> list[str]:
    from app.lake.storage import s3_filesystem

    fs = s3_filesystem(settings)
    lines = []
    for prefix in (settings.s3_purchases_prefix, settings.s3_quarantine_prefix):
        root = f"{settings.s3_bucket}/{prefix}"
        files = fs.find(root) if fs.exists(root) else []
        parquet = [f for f in files if f.endswith(".parquet")]
        size = sum(fs.size(f) for f in parquet) if parquet else 0
        lines.append(f"lake s3://{root}: {len(parquet)} Parquet files, {size / 2**20:.1f} MiB")
    return lines


def lake_orders(settings: Settings) -> list[str]:
    """Orders in the lake (committed files only), re-deliveries, and conflicting `OrderId`s."""
    import pyarrow.parquet as pq

    from app.analysis.conflicts import ORDER_FIELDS, conflicting_orders
    from app.lake.sink_log import committed_files
    from app.lake.storage import s3_filesystem

    files = committed_files(settings, settings.purchases_url)
    if not files:
        return ["lake orders: none committed yet"]
    rows = pq.ParquetDataset(files, filesystem=s3_filesystem(settings)).read(columns=ORDER_FIELDS)
    distinct = rows.group_by("OrderId").aggregate([]).num_rows
    line = f"lake orders: {rows.num_rows} rows, {distinct} OrderIds"
    conflicts = conflicting_orders(rows)
    if not conflicts:
        return [line + ", no conflicting versions"]
    shown = ", ".join(f"{order_id} ({n} versions)" for order_id, n in list(conflicts.items())[:5])
    more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
    return [
        line,
        f"lake orders: CONFLICT: {len(conflicts)} OrderIds arrived with different content, all "
        f"versions kept and counted: {shown}{more}",
    ]


def table_rows(settings: Settings) -> list[str]:
    from psycopg2 import sql

    from app.analysis.repeat_store import connect

    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (settings.repeat_purchases_table,))
            if cur.fetchone()[0] is None:
                return [f"postgres {settings.repeat_purchases_table}: no table yet"]
            table = sql.Identifier(settings.repeat_purchases_table)
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
            rows = cur.fetchone()[0]
        where = f"{settings.postgres_database}.{settings.repeat_purchases_table}"
        return [f"postgres {where}: {rows} rows"]
    finally:
        conn.close()


def report(settings: Settings) -> list[str]:
    lines = [
        f"service {row['service']}: {row['state']} ({row['mode']})" for row in status_rows(settings)
    ]
    probes: list[tuple[str, Callable[[Settings], list[str]]]] = [
        ("Kafka", topic_offsets),
        ("MongoDB", mongo_counts),
        ("S3", lake_files),
        ("S3", lake_orders),
        ("PostgreSQL", table_rows),
    ]
    for name, probe in probes:
        try:
            lines += probe(settings)
        except Exception as exc:  # a down service is a line in the report, not a crash
            lines.append(f"{name}: unreachable ({type(exc).__name__}: {exc})")
    return lines


def main() -> None:
    for line in report(get_settings()):
        print(line)


if __name__ == "__main__":
    main()
