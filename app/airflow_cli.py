"""`task airflow -- <args>`: the `airflow` command against the lab's Airflow.

A plain `airflow ...` in the venv talks to `~/airflow` and its SQLite database. This runs the
same command with the lab's environment: its `AIRFLOW_HOME` under `.lab/`, its PostgreSQL
metadata database, this repository's `dags/` and the lab's settings. For example:

    task airflow -- dags list
    task airflow -- dags trigger user_events_pipeline
    task airflow -- dags list-runs user_events_pipeline
"""

from __future__ import annotations

import os
import subprocess
import sys

from app.airflow_runner import AIRFLOW, airflow_environment, metadata_database
from app.core.config import ROOT, get_settings
from app.core.logs import setup_logging


def main(argv: list[str] | None = None) -> None:
    setup_logging("airflow", get_settings())
    settings = get_settings()
    environment = {
        **os.environ,
        **settings.as_environment(),
        **airflow_environment(settings, metadata_database(settings)),
    }
    args = sys.argv[1:] if argv is None else argv
    sys.exit(
        subprocess.run([str(AIRFLOW), *args], env=environment, cwd=ROOT, check=False).returncode
    )


if __name__ == "__main__":
    main()
