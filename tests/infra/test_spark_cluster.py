"""The Spark standalone cluster's commands, where they need no JVM to be checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings, get_settings
from app.core.process import InfraError
from app.infra.report import spark_cluster_rows
from app.infra.spark_cluster import SparkWorker, cluster_down
from tests.support import free_port


def _settings(tmp_path: Path) -> Settings:
    return get_settings().model_copy(
        update={
            "lab_home": tmp_path,
            "spark_cluster_master_port": free_port(),
            "spark_cluster_master_ui_port": free_port(),
            "spark_cluster_worker_ui_port": free_port(),
        }
    )


def test_a_worker_without_its_master_says_to_start_the_cluster(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(InfraError, match=r"Spark master is not running .* `task spark-cluster-up`"):
        SparkWorker(settings).start()
    assert SparkWorker(settings).pid() is None


def test_a_cluster_that_is_not_running_is_shown_down_and_stopping_it_is_harmless(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    assert [(row["service"], row["state"]) for row in spark_cluster_rows(settings)] == [
        ("spark-master", "down"),
        ("spark-worker", "down"),
    ]
    assert cluster_down(settings) == [
        "spark-worker was not running",
        "spark-master was not running",
    ]
