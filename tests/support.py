"""Helpers shared by several test packages."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from app.core.config import ROOT, Settings
from app.core.topics import ensure_topics
from app.infra.kafka import Kafka
from app.infra.spark_cluster import SparkDaemon, SparkMaster, SparkWorker
from app.pipeline.store import EventStore


class SpareKafka(Kafka):
    """A Kafka node of the lab's cached jars with a name of its own (`kafka-spare-<tag>`, or
    `kafka-spare-<tag>-<node>` in a cluster), so its data, log, pid and config files (and its
    ports, from the settings) are apart from the lab's Kafka and from other spare ones. Tests
    stop, kill and start it to cause real outages without touching the lab's Kafka."""

    def __init__(self, settings: Settings, tag: str, node: int = 1) -> None:
        super().__init__(settings, node, base_name=f"kafka-spare-{tag}")

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    def wipe(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.cluster_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (a Kafka cluster's nodes sit side by side)."""
    while True:
        first = free_port()
        try:
            for port in range(first, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first


@contextmanager
def spare_kafka_cluster(
    base: Settings, tag: str, brokers: int, **changes: Any
) -> Iterator[list[SpareKafka]]:
    """`brokers` started spare Kafka nodes (one cluster, replicated as the settings derive it
    from the size) on free ports, with topics `<tag>-UserEvents`/`-PurchasedItem`; their
    `settings` point at them. Stopped and wiped afterwards."""
    first = free_ports(2 * brokers)
    settings = base.model_copy(
        update={
            "kafka_bootstrap_servers": f"127.0.0.1:{first}",
            "kafka_controller_port": first + 1,
            "kafka_brokers": brokers,
            "kafka_replication_factor": None,
            "kafka_heap": "256m",
            "topic_user_events": f"{tag}-UserEvents",
            "topic_purchased_item": f"{tag}-PurchasedItem",
            **changes,
        }
    )
    nodes = [SpareKafka(settings, tag, node) for node in range(1, brokers + 1)]
    for node in nodes:  # all before any starts: a node's wipe takes the cluster's folder
        node.wipe()
    try:
        for node in nodes:
            node.start()
        ensure_topics(settings)
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        for node in nodes:
            node.wipe()


@contextmanager
def spare_kafka(base: Settings, tag: str, **changes: Any) -> Iterator[SpareKafka]:
    """A started spare broker (a cluster of one); see `spare_kafka_cluster`."""
    with spare_kafka_cluster(base, tag, 1, **changes) as (broker,):
        yield broker


class SpareSparkMaster(SparkMaster):
    """A standalone master named `spark-master-<tag>`: files and data apart from the lab's."""

    def __init__(self, settings: Settings, tag: str) -> None:
        self.name = f"spark-master-{tag}"
        super().__init__(settings)


class SpareSparkWorker(SparkWorker):
    def __init__(self, settings: Settings, tag: str) -> None:
        self.name = f"spark-worker-{tag}"
        super().__init__(settings)


def cluster_processes(daemons: list[SparkDaemon]) -> list[psutil.Process]:
    """Every process running in a daemon's data folder: the daemons and the worker's executors
    (each works in a folder of the worker's)."""
    folders = [str(daemon.data_dir) for daemon in daemons]
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            cwd = process.cwd()
            if any(cwd == folder or cwd.startswith(f"{folder}/") for folder in folders):
                found.append(process)
    return found


@contextmanager
def spare_spark_cluster(base: Settings, tag: str) -> Iterator[tuple[SparkMaster, SparkWorker]]:
    """A started standalone master and worker on free ports; their `settings` point at them
    (`spark_cluster_url`). Stopped and wiped afterwards; fails if a JVM of theirs is left."""
    settings = base.model_copy(
        update={
            "spark_cluster_master_port": free_port(),
            "spark_cluster_master_ui_port": free_port(),
            "spark_cluster_worker_ui_port": free_port(),
            "spark_cluster_daemon_memory": "256m",
        }
    )
    master, worker = SpareSparkMaster(settings, tag), SpareSparkWorker(settings, tag)
    try:
        master.start()
        worker.start()
        yield master, worker
    finally:
        worker.stop()
        master.stop()
        left = cluster_processes([master, worker])
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        for daemon in (master, worker):
            shutil.rmtree(daemon.data_dir, ignore_errors=True)
        assert not left, f"JVMs of the Spark cluster outlived its stop: {left}"


def read_topic(settings: Settings, topic: str) -> list[Message]:
    """Every record of a topic, from the beginning up to its end at the time of the call."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_servers,
            "group.id": "tests-reader",  # never joined: partitions are assigned
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        messages: list[Message] = []
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            messages.append(message)
            partition, offset = message.partition(), message.offset()
            assert partition is not None and offset is not None
            if offset + 1 >= ends[partition]:
                pending.discard(partition)
        assert not pending, f"could not read {topic} to its end within 30 s"
        return messages
    finally:
        consumer.close()


def make_isolated_settings(base: Settings, tag: str | None = None) -> Settings:
    """Settings whose topics, database, prefixes and table belong to one test scope only."""
    tag = tag or uuid.uuid4().hex[:10]
    return base.model_copy(
        update={
            "topic_user_events": f"test-{tag}-UserEvents",
            "topic_purchased_item": f"test-{tag}-PurchasedItem",
            "mongo_database": f"test_{tag}",
            "s3_purchases_prefix": f"test-{tag}/raw/purchased_items/",
            "s3_quarantine_prefix": f"test-{tag}/raw/purchased_items_quarantine/",
            "repeat_purchases_table": f"repeat_purchases_test_{tag}",
            # Airflow's metadata of a test (`airflow dags test`, a lab under honcho) stays apart
            # from the lab's own DAG runs.
            "postgres_airflow_database": f"airflow_test_{tag}",
            "drain_group_id": f"test-{tag}-drain",
            "spark_checkpoint_dir": str(base.lab_home / "test-checkpoints" / tag),
        }
    )


def remove_isolated(settings: Settings) -> None:
    """Delete what a test scope made of `make_isolated_settings`: topics and consumer group,
    S3 prefixes, Mongo database, Postgres table and Airflow database, the stream's checkpoint."""
    from psycopg2 import sql

    from app.core.clients import kafka_admin, mongo_client, postgres_connection, s3_filesystem
    from app.lake.storage import location

    admin = kafka_admin(settings)
    topics = [settings.topic_user_events, settings.topic_purchased_item]
    existing = [t for t in topics if t in set(admin.list_topics(timeout=10).topics)]
    for future in (admin.delete_topics(existing) if existing else {}).values():
        future.result(timeout=30)
    groups = admin.list_consumer_groups().result(timeout=10).valid
    if any(group.group_id == settings.drain_group_id for group in groups):
        admin.delete_consumer_groups([settings.drain_group_id])[settings.drain_group_id].result(30)

    fs = s3_filesystem(settings)
    for prefix in (settings.s3_purchases_prefix, settings.s3_quarantine_prefix):
        # Both prefixes sit in one folder of the test's own (`test-<tag>/raw/...`).
        top = f"{settings.s3_bucket}/{prefix.split('/')[0]}"
        if fs.exists(top):
            fs.rm(top, recursive=True)
    checkpoint_fs, checkpoint = location(settings, settings.checkpoint_dir)
    if checkpoint_fs.exists(checkpoint):
        checkpoint_fs.rm(checkpoint, recursive=True)

    client = mongo_client(settings)
    client.drop_database(settings.mongo_database)
    client.close()
    conn = postgres_connection(settings)
    try:
        with conn, conn.cursor() as cur:
            table = sql.Identifier(settings.repeat_purchases_table)
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    finally:
        conn.close()
    conn = postgres_connection(settings, "postgres")
    conn.autocommit = True  # DROP DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            database = sql.Identifier(settings.postgres_airflow_database)
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
    finally:
        conn.close()


@functools.cache
def _mongo_client_for(url: str) -> Any:
    from app.core.clients import mongo_client

    client = mongo_client(Settings().model_copy(update={"mongo_url": url}))
    atexit.register(client.close)
    return client


def event_store(settings: Settings) -> EventStore:
    """The pipeline's store for `settings`, on one client per MongoDB URL for the whole test
    session (closed at exit), so tests do not open a client per look."""
    return EventStore.connect(settings, _mongo_client_for(settings.mongo_url))


def start_group(argv: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` from the repository root in a process group of its own (as honcho runs its
    lines), its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(
    process: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM, timeout: float = 60
) -> None:
    """Send `stop_signal` to the process's group; SIGKILL it if it is not gone in `timeout`."""
    if process.poll() is None:
        os.killpg(process.pid, stop_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
