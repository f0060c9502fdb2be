"""The lab's one settings object.

Every part of the lab (API, generator, DAG, Spark job, notebooks, infra scripts, tests) reads its
endpoints, names and limits from here. Values come from the environment or a `.env` file at the
repository root; the defaults are the lab's documented defaults (see `.env.example`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[2]
# Nodes of a local Kafka cluster: ports stay in a short, predictable range.
MAX_KAFKA_BROKERS = 9


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=ROOT / ".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Where the local-process lab keeps data, logs, pids, binaries and jars (git-ignored).
    lab_home: Path = Field(default=ROOT / ".lab")
    # auto: Docker when an engine answers, else local processes.
    lab_infra_mode: Literal["auto", "docker", "local"] = "auto"
    # What the lab's processes log (app/core/logs.py); DEBUG also shows the libraries' lines.
    lab_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Housekeeping (`task tidy`, DAG `lab_housekeeping` daily; app/housekeeping.py).
    # A `<lab home>/logs/*.log` over this size is cut, its newest part kept in `<name>.log.1`;
    # the Spark driver's `spark.log` rolls itself at this size (app/lake/log4j2.properties).
    lab_log_max_mb: int = Field(default=50, ge=1)
    # Log files, Airflow's task-log folders and Airflow's metadata rows (DAG runs, task
    # instances, XComs) older than this are deleted: a week of runs stays to look back on.
    lab_log_keep_days: float = Field(default=7.0, gt=0)

    # Ingest API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Server processes sharing the port (`python -m app.api` without live reload; reloading
    # serves one). 0: one per CPU core. Each has its own Kafka producer and validation workers.
    api_workers: int = Field(default=0, ge=0)
    # `python -m app.api` reloads on code changes under app/ (development); false, or the
    # command's `--no-reload`, serves API_WORKERS processes instead (a load test, a soak).
    api_reload: bool = True
    api_max_batch: int = Field(default=1000, ge=1)
    # The largest legitimate request: 1,000 orders of 10 product lines each (the generator's
    # have 1-4) take 1.1 MB as json.dumps writes them; 2 MiB leaves room for long ids and indents.
    api_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Processes validating bodies over 16 KiB, off the event loop (at most this many at once),
    # shared out among the server processes (at least one each).
    api_validation_workers: int = Field(default=2, ge=1)
    # Large bodies waiting for a validation worker, per server process; one more gets a 503
    # with Retry-After at once instead of joining a queue with no end.
    api_validation_queue: int = Field(default=16, ge=0)
    # ... and a body that waited this long for a worker gets that 503 instead of being
    # validated late (its client has likely given up; the workers go to bodies still wanted).
    api_validation_wait_seconds: float = Field(default=10.0, gt=0)
    # Slow clients. A connection is closed when a request's headers are not complete this long
    # after it opened or after its previous answer (idle keep-alive connections too) ...
    api_header_timeout_seconds: int = Field(default=5, ge=1)
    # ... and a request whose body has not fully arrived this long after its headers gets a 408.
    api_body_timeout_seconds: float = Field(default=30.0, gt=0)
    # Open connections (or requests in progress) of one server process from which on its new
    # requests get a 503.
    api_max_connections: int = Field(default=1000, ge=1)
    # On stop, requests in progress get this long to finish (> the produce timeout).
    api_graceful_shutdown_seconds: int = Field(default=10, ge=1)
    api_produce_timeout_seconds: float = Field(default=5.0, gt=0)
    # How long /health and /health/ready wait for Kafka's metadata answer.
    api_health_timeout_seconds: float = Field(default=1.0, gt=0)

    # Live console (python -m app.console): one page showing every hop of the pipeline.
    console_host: str = "127.0.0.1"
    console_port: int = 8050
    # How often the console samples the fast probes and pushes figures to the page.
    console_tick_seconds: float = Field(default=2.0, gt=0, le=2.0)

    # Data generator (python -m app.generator); its command-line options override these.
    generator_users_per_second: int = Field(default=20, ge=1)
    # Requests in flight per process (`--concurrency`): about the events per second times the
    # API's latency. 16 is ample for the default rate; bench_soak.py offers 3,000 events/s
    # with 512, since the latency grows when the whole lab shares the cores.
    generator_concurrency: int = Field(default=16, ge=1)
    # Processes sharing the users (`--processes`): one sent 3,000 events/s on 0.22 of a core in
    # the 10-minute soak; more only help past a core's worth.
    generator_processes: int = Field(default=1, ge=1)
    # How long one request is retried (503, connection errors) before its records count as failed.
    generator_retry_seconds: float = Field(default=30.0, ge=0)

    # Kafka. KAFKA_BROKERS=3 runs a three-node cluster in local mode (and compose): node i on
    # the bootstrap port + 2*(i-1), its controller on the controller port + 2*(i-1). A list of
    # several servers in KAFKA_BOOTSTRAP_SERVERS (a cluster of other hosts) is used as it is.
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_controller_port: int = 9093
    kafka_brokers: int = Field(default=1, ge=1, le=MAX_KAFKA_BROKERS)
    kafka_version: str = "4.1.2"
    kafka_heap: str = "512m"
    kafka_partitions: int = Field(default=3, ge=1)
    # Unset: 3 with three brokers or more, else one per broker (see `kafka_replicas`).
    kafka_replication_factor: int | None = Field(default=None, ge=1)
    topic_user_events: str = "UserEvents"
    topic_purchased_item: str = "PurchasedItem"

    # MongoDB
    mongo_url: str = "mongodb://127.0.0.1:27017"
    mongo_database: str = "ecommerce"
    mongo_events_collection: str = "user_events"
    mongo_counts_collection: str = "user_event_counts"
    mongo_quarantine_collection: str = "user_events_quarantine"
    # Batches the drain stored whose events task 2 has not counted yet.
    mongo_pending_collection: str = "user_event_counts_pending"
    # The drain's memory of each topic's id, to notice a topic that was re-created.
    mongo_drain_state_collection: str = "user_events_drain_state"

    # S3 (MinIO in compose, an S3-compatible server in local mode)
    s3_endpoint_url: str = "http://127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    s3_region: str = "us-east-1"
    s3_bucket: str = "lake"
    s3_purchases_prefix: str = "raw/purchased_items/"
    s3_quarantine_prefix: str = "raw/purchased_items_quarantine/"

    # PostgreSQL
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_user: str = "lab"
    postgres_password: str = "lab"
    postgres_database: str = "analytics"
    postgres_airflow_database: str = "airflow"
    repeat_purchases_table: str = "repeat_purchases"

    # Airflow
    airflow_port: int = 8080
    airflow_admin_user: str = "admin"
    airflow_admin_password: str = "admin"
    dag_id: str = "user_events_pipeline"

    # Drain task (Airflow task 1)
    drain_group_id: str = "user-events-to-mongo"
    # At most 50,000: each batch's pending-pairs document must stay far below MongoDB's 16 MB.
    drain_batch_size: int = Field(default=5000, ge=1, le=50_000)
    drain_max_records: int = Field(default=1_000_000, ge=1)
    drain_max_seconds: float = Field(default=100.0, gt=0)
    # Drains run side by side, each on its share of the topic's partitions (mapped DAG tasks).
    drain_parallelism: int = Field(default=1, ge=1)
    # Counts task (Airflow task 2): pending (UserId, EventName) entries read and written per step.
    # A pair listed by several pending batches of one step is read and written once, so large
    # steps save writes (measured: 60,000 events of 6,000 users are 52,630 writes in steps of
    # 5,000, 17,312 in one step); 100,000 entries hold about 30 MB.
    counts_batch_size: int = Field(default=100_000, ge=1)
    # Update commands in flight at once: the stand-in spends most of an update outside SQLite's
    # single writer (measured: 4 in flight take half the time of 1 on 2 cores).
    counts_write_threads: int = Field(default=4, ge=1, le=32)

    # Spark stream
    spark_master: str = "local[*]"
    spark_trigger_interval: str = "30 seconds"
    spark_max_offsets_per_trigger: int = Field(default=200_000, ge=1)
    # Empty: next to the lake, in the bucket (see `checkpoint_dir`). An `s3a://` URL or a path.
    spark_checkpoint_dir: str = ""
    # How long the stream's Kafka client waits for an answer (Spark tries three times); then
    # the query fails and the stream restarts it once Kafka answers again.
    spark_kafka_timeout_seconds: float = Field(default=60.0, ge=1)
    # A stream's claim on an S3 checkpoint lapses this long after its last renewal.
    spark_writer_lease_seconds: float = Field(default=60.0, ge=5)
    # A stop (SIGTERM, Ctrl-C) that takes longer than this kills the JVM and exits 0: honcho
    # sends SIGKILL 5 s after SIGTERM. The batch cut short is written again on the next start.
    spark_stop_seconds: float = Field(default=3.5, gt=0)
    spark_driver_memory: str = "1g"
    # The address executors reach the driver at (and the driver's ports bind to): loopback for
    # the lab; the host's own address when the executors run on other hosts.
    spark_driver_host: str = "127.0.0.1"
    # Per application on a cluster (`SPARK_MASTER=spark://...`): at most this many cores, so
    # the stream and `task analyze` share one worker instead of the first taking all of it.
    spark_cores_max: int = Field(default=1, ge=1)
    spark_executor_memory: str = "1g"
    # The Python the executors run (UDFs, Python workers). Empty: the driver's own interpreter,
    # i.e. the venv's; on other hosts, the path of a Python with the same packages there.
    spark_executor_python: str = ""

    # Lake compaction (`task lake-compact`, DAG `lake_compaction`): each sink partition's small
    # files merged into files of about this size (Parquet, snappy; ~128 MB is what HDFS-era
    # readers and Spark's own `maxPartitionBytes` are tuned for).
    lake_compact_target_mb: int = Field(default=128, ge=1)
    # A partition is compacted once it has this many files below half the target size.
    lake_compact_min_files: int = Field(default=2, ge=2)
    # Replaced files stay this long after the sink log stops listing them, for readers that
    # listed them just before (the same 10 minutes Spark waits before deleting its old log files).
    lake_compact_grace_seconds: float = Field(default=600.0, ge=0)
    # The DAG's interval: the open day's small files are merged this often too.
    lake_compact_every_minutes: int = Field(default=60, ge=1)
    # How long `task lake-compact` waits for a running stream to compact at its request.
    lake_compact_wait_seconds: float = Field(default=600.0, gt=0)

    # Spark standalone cluster (`task spark-cluster-up`): a master and one worker on loopback,
    # started from the pyspark installation; the stream joins it with SPARK_MASTER=spark://...
    spark_cluster_master_port: int = 7077
    spark_cluster_master_ui_port: int = 8081
    spark_cluster_worker_ui_port: int = 8082
    # Sized for a 2-core laptop: two applications of one core and 1 GiB each.
    spark_cluster_worker_cores: int = Field(default=2, ge=1)
    spark_cluster_worker_memory: str = "2g"
    # The heap of the master and worker daemons themselves (they only schedule).
    spark_cluster_daemon_memory: str = "512m"

    @field_validator("s3_purchases_prefix", "s3_quarantine_prefix")
    @classmethod
    def _prefix_ends_with_slash(cls, value: str) -> str:
        return value.strip("/") + "/"

    @model_validator(mode="after")
    def _replicas_fit_the_brokers(self) -> Settings:
        if self.kafka_replicas > self.kafka_brokers:
            raise ValueError(
                f"KAFKA_REPLICATION_FACTOR={self.kafka_replication_factor} needs at least that "
                f"many brokers, but KAFKA_BROKERS={self.kafka_brokers}: set KAFKA_BROKERS="
                f"{self.kafka_replicas} (a cluster of that many nodes) or unset "
                f"KAFKA_REPLICATION_FACTOR (it then follows KAFKA_BROKERS)."
            )
        return self

    # Derived values: computed, never configured twice.
    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def api_worker_count(self) -> int:
        return self.api_workers or os.cpu_count() or 1

    @property
    def api_validation_workers_per_process(self) -> int:
        # Measured with 2 server processes: 1 each, against 2, validated orders at the same
        # rate for 24 instead of 36 µs of CPU an order (four validating processes on two cores).
        return max(1, self.api_validation_workers // self.api_worker_count)

    @property
    def console_url(self) -> str:
        return f"http://{self.console_host}:{self.console_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def kafka_port(self) -> int:
        """The first broker's port (node 1 of a local cluster)."""
        return int(self.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    @property
    def kafka_servers(self) -> str:
        """The bootstrap list every Kafka client uses: KAFKA_BOOTSTRAP_SERVERS when it lists
        several servers, else one address per local node (`kafka_node_ports`)."""
        if "," in self.kafka_bootstrap_servers:
            return self.kafka_bootstrap_servers
        host = self.kafka_bootstrap_servers.rsplit(":", 1)[0]
        return ",".join(f"{host}:{port}" for port, _ in self.kafka_node_ports)

    @property
    def kafka_node_ports(self) -> list[tuple[int, int]]:
        """(broker port, controller port) of local nodes 1..KAFKA_BROKERS."""
        return [
            (self.kafka_port + 2 * i, self.kafka_controller_port + 2 * i)
            for i in range(self.kafka_brokers)
        ]

    @property
    def kafka_replicas(self) -> int:
        """Replication factor of the lab's topics and of Kafka's internal ones."""
        return self.kafka_replication_factor or self.kafka_default_replicas

    @property
    def kafka_default_replicas(self) -> int:
        """The replication factor KAFKA_BROKERS gives when KAFKA_REPLICATION_FACTOR is unset."""
        return min(self.kafka_brokers, 3)

    @property
    def kafka_replication_warning(self) -> str | None:
        """What an explicit KAFKA_REPLICATION_FACTOR below the cluster's default gives up (an
        `.env` from a one-broker lab kept after a move to three brokers, say)."""
        derived = self.kafka_default_replicas
        if self.kafka_replication_factor is None or self.kafka_replication_factor >= derived:
            return None
        return (
            f"KAFKA_REPLICATION_FACTOR={self.kafka_replication_factor} on "
            f"{self.kafka_brokers} brokers: new topics keep {self.kafka_replication_factor} "
            f"copy(ies), so losing one broker can lose acknowledged records. Unset it (the "
            f"factor then follows KAFKA_BROKERS: {derived}) unless that is what you want."
        )

    @property
    def kafka_min_insync_replicas(self) -> int:
        """Replicas that must have a record before it is acknowledged (acks=all): with three,
        one broker may be lost without refusing writes or losing acknowledged ones."""
        return max(1, self.kafka_replicas - 1)

    @property
    def mongo_port(self) -> int:
        return int(self.mongo_url.rsplit(":", 1)[1].split("/")[0])

    @property
    def s3_port(self) -> int:
        return int(self.s3_endpoint_url.rsplit(":", 1)[1].rstrip("/"))

    @property
    def spark_cluster_url(self) -> str:
        """The master URL of the lab's standalone cluster, for SPARK_MASTER."""
        return f"spark://127.0.0.1:{self.spark_cluster_master_port}"

    @property
    def purchases_url(self) -> str:
        """Top folder of the raw purchases, as Spark (s3a) reads it."""
        return f"s3a://{self.s3_bucket}/{self.s3_purchases_prefix}"

    @property
    def purchases_quarantine_url(self) -> str:
        return f"s3a://{self.s3_bucket}/{self.s3_quarantine_prefix}"

    @property
    def checkpoint_dir(self) -> str:
        """Where the stream's checkpoints live: by default in the lake's bucket, so the
        checkpoint and the sink log it must agree with are kept (and lost) together."""
        return self.spark_checkpoint_dir or f"s3a://{self.s3_bucket}/checkpoints"

    def as_environment(self) -> dict[str, str]:
        """These settings as environment variables: a child process rebuilds the same Settings."""
        return {
            name.upper(): str(value)
            for name, value in self.model_dump().items()
            if value is not None  # unset: the child derives it too
        }

    def postgres_dsn(self, database: str | None = None) -> str:
        """libpq URL for the analytics database (or another database on the same server)."""
        return (
            f"postgresql://{quote(self.postgres_user)}:{quote(self.postgres_password)}"
            f"@{self.postgres_host}:{self.postgres_port}/{database or self.postgres_database}"
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
