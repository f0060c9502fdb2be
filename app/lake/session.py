"""The lab's SparkSession: small-machine defaults, s3a on the lab's S3 endpoint, connector jars.

Used by the stream (`kafka=True`) and the analysis notebooks. Everything comes from the settings
object; the jars come from `app.lake.jars` (resolved with Maven on first use, then cached).

No S3A committer is configured on purpose: the streaming file sink does not rename task output
(each task writes its files in place and the batch commits by appending their names to
`_spark_metadata`), so the classic rename problem of S3 does not arise, and readers that honour
`_spark_metadata` (every `spark.read` of the top folder) see only committed files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from pyspark.sql import SparkSession

from app.core.config import Settings
from app.lake.jars import ensure_jars

# Two cores shared with Kafka, the API and Airflow: Spark's 200 shuffle partitions would be
# 200 tiny tasks per aggregation.
SHUFFLE_PARTITIONS = 4
LOG_CONFIG = Path(__file__).with_name("log4j2.properties")


def s3a_options(settings: Settings) -> dict[str, str]:
    """Hadoop s3a settings for the lab's endpoint (MinIO or the local S3 gateway)."""
    endpoint = urlparse(settings.s3_endpoint_url)
    return {
        "fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.s3a.endpoint": settings.s3_endpoint_url,
        "fs.s3a.endpoint.region": settings.s3_region,
        # Neither MinIO nor the local gateway serves virtual-host bucket names.
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": str(endpoint.scheme == "https").lower(),
        "fs.s3a.aws.credentials.provider": (
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        ),
        "fs.s3a.access.key": settings.s3_access_key,
        "fs.s3a.secret.key": settings.s3_secret_key,
        # Spark names every file it writes uniquely, so the probes s3a makes before creating a
        # file (is it a directory? does it exist?) are 1-2 wasted requests per file.
        "fs.s3a.create.performance": "true",
    }


def cluster_options(settings: Settings) -> dict[str, str]:
    """Where executors find the driver, and each application's share of a cluster (ignored by
    `local[*]`). The connector jars of `spark.jars` are served by the driver to every executor."""
    return {
        # The lab runs on loopback; don't depend on the host name resolving.
        "spark.driver.host": settings.spark_driver_host,
        "spark.driver.bindAddress": settings.spark_driver_host,
        "spark.cores.max": str(settings.spark_cores_max),
        "spark.executor.memory": settings.spark_executor_memory,
    }


def _driver_logging(settings: Settings) -> str:
    """JVM options of the driver's log: warnings to `<lab home>/logs/spark.log`, rolled to
    `spark.log.1` at LAB_LOG_MAX_MB, errors also to the terminal (`log4j2.properties` beside
    this module)."""
    log = settings.lab_home / "logs" / "spark.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return (
        f"-Dlog4j2.configurationFile=file:{LOG_CONFIG} -Dlab.spark.log={log} "
        f"-Dlab.spark.log.max={settings.lab_log_max_mb}MB"
    )


def build_spark_session(
    settings: Settings,
    app_name: str,
    *,
    kafka: bool = False,
    master: str | None = None,
    ui: bool = False,
    java_options: str = "",
) -> SparkSession:
    """A SparkSession for the lab; `kafka=True` adds the Kafka source jars.

    `java_options` are added to the driver JVM's (the executors' in `local[*]`).
    Jar, memory and JVM settings only take effect when this call starts the JVM: Spark keeps one
    session per process, so build it once (with `kafka=True` if any part of the process streams).
    """
    master = master or settings.spark_master
    jars = ensure_jars(settings).for_session(kafka=kafka)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.jars", ",".join(str(jar) for jar in jars))
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.shuffle.partitions", str(SHUFFLE_PARTITIONS))
        .config("spark.sql.session.timeZone", "UTC")
        # INT96 is Spark's legacy default; micros are what pyarrow and DuckDB read natively.
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", str(ui).lower())
        .config("spark.ui.showConsoleProgress", "false")
        # The UI's kill links would let anyone who reaches the port stop the stream.
        .config("spark.ui.killEnabled", "false")
        .config("spark.driver.extraJavaOptions", f"{_driver_logging(settings)} {java_options}")
    )
    for key, value in cluster_options(settings).items():
        builder = builder.config(key, value)
    # The web UI binds SPARK_LOCAL_IP, else every interface (spark.driver.bindAddress does not
    # apply to it); the JVM that getOrCreate starts inherits this environment.
    os.environ["SPARK_LOCAL_IP"] = settings.spark_driver_host
    # The executors run the Python that pyspark names in PYSPARK_PYTHON (else `python3` on
    # their PATH, without the lab's packages): the venv's, unless set for other hosts.
    os.environ["PYSPARK_PYTHON"] = settings.spark_executor_python or sys.executable
    for key, value in s3a_options(settings).items():
        builder = builder.config(f"spark.hadoop.{key}", value)
    return builder.getOrCreate()
