"""Fixtures of the DAG tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.airflow_runner import airflow_environment
from app.core.config import ROOT, get_settings


@pytest.fixture(scope="session")
def dag_bag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Airflow's DagBag of the repository's dags/ folder, parsed as the DAG processor does."""
    home = tmp_path_factory.mktemp("airflow")
    environment = airflow_environment(get_settings(), f"sqlite:///{home / 'airflow.db'}")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**environment, "AIRFLOW_HOME": str(home)}.items():
            patch.setenv(name, value)
        from airflow.dag_processing.dagbag import DagBag

        yield DagBag(dag_folder=ROOT / "dags")
