"""Fixtures of the analysis tests: the shared Spark JVM and the known lake on local disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg2 import sql
from pyspark.sql import DataFrame, SparkSession

from app.analysis.purchases import dedupe_orders, read_purchases, tune_for_analysis
from app.core.clients import postgres_connection, s3_filesystem
from app.core.config import Settings, get_settings
from app.lake.session import build_spark_session
from tests.analysis.dataset import lake_rows, write_lake


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    # Same arguments as the lake tests' session: one JVM per process serves both directories.
    session = build_spark_session(get_settings(), "lake-tests", kafka=True, master="local[2]")
    tune_for_analysis(session)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def known_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lake") / "raw" / "purchased_items"
    write_lake(lake_rows(), root)
    return root


@pytest.fixture(scope="session")
def orders(spark: SparkSession, known_lake: Path) -> DataFrame:
    return dedupe_orders(read_purchases(spark, str(known_lake)))


def discard(settings: Settings) -> None:
    """Remove what a test scope left on the services: its S3 folder and its table."""
    scope = settings.s3_purchases_prefix.split("/")[0]
    assert scope.startswith("test-"), f"refusing to delete {scope!r}: not a test scope"
    fs = s3_filesystem(settings)
    if fs.exists(f"{settings.s3_bucket}/{scope}"):
        fs.rm(f"{settings.s3_bucket}/{scope}", recursive=True)
    conn = postgres_connection(settings)
    try:
        with conn.cursor() as cur:
            table = sql.Identifier(settings.repeat_purchases_table)
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.commit()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def scope_settings(isolated_settings: Settings) -> Iterator[Settings]:
    """The module's isolated settings, cleaned off S3 and PostgreSQL afterwards."""
    yield isolated_settings
    discard(isolated_settings)
