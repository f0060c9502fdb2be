"""`python -m app.airflow_runner`: Airflow 3 standalone, set up for the lab (the Procfile's line).

- `AIRFLOW_HOME` is `<lab_home>/airflow` (git-ignored); the DAGs folder is this repository's
  `dags/`; no example DAGs; new DAGs start unpaused, so the pipeline runs every 2 minutes from
  the first start.
- Airflow's metadata lives in PostgreSQL, in a database of its own (`POSTGRES_AIRFLOW_DATABASE`,
  created when missing). Only when PostgreSQL is not reachable does it fall back to SQLite under
  `AIRFLOW_HOME`, and says so.
- The UI and API listen on 127.0.0.1:`AIRFLOW_PORT`; the login is `AIRFLOW_ADMIN_USER` /
  `AIRFLOW_ADMIN_PASSWORD` (Airflow's simple auth manager, which reads passwords from a file
  this module writes from the settings).

`dags_test` runs `airflow dags test` with the same environment, for the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from app.core.config import ROOT, Settings, get_settings

HOST = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
AIRFLOW = VENV_BIN / "airflow"


def airflow_home(settings: Settings) -> Path:
    return settings.lab_home / "airflow"


def metadata_database(settings: Settings) -> str:
    """SQLAlchemy URL of Airflow's metadata database: PostgreSQL, or SQLite when it is down."""
    import psycopg2

    from app.infra.bootstrap import ensure_databases

    try:
        ensure_databases(settings)
    except psycopg2.Error as error:
        path = airflow_home(settings) / "airflow.db"
        print(
            f"airflow: PostgreSQL at {settings.postgres_host}:{settings.postgres_port} is not "
            f"reachable ({str(error).strip()}), so Airflow keeps its metadata in SQLite at {path} "
            "this time. Run `task infra-up`, then restart Airflow to use PostgreSQL.",
            file=sys.stderr,
        )
        return f"sqlite:///{path}"
    # SQLAlchemy 2.1 picks psycopg 3 for a bare `postgresql://`; the lab ships psycopg2.
    dsn = settings.postgres_dsn(settings.postgres_airflow_database)
    return dsn.replace("postgresql://", "postgresql+psycopg2://", 1)


def write_passwords_file(settings: Settings) -> Path:
    """The simple auth manager's password file, holding the login from the settings.

    Written on every start so a changed password applies; the manager only generates a random
    password for users missing from this file.
    """
    path = airflow_home(settings) / "simple_auth_manager_passwords.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps({settings.airflow_admin_user: settings.airflow_admin_password}))
    return path


def airflow_environment(settings: Settings, metadata_url: str) -> dict[str, str]:
    """The `AIRFLOW__*` variables (and paths) every Airflow process of the lab runs with."""
    home = airflow_home(settings)
    base_url = f"http://{HOST}:{settings.airflow_port}"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        # Task processes reach the execution API through this URL.
        "AIRFLOW__API__BASE_URL": base_url,
        # One API worker: the lab runs on a laptop next to Kafka, Spark and the rest.
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
            home / "simple_auth_manager_passwords.json"
        ),
        # DAG files and tasks import the lab's package; standalone starts `airflow` from PATH.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
    }


def settings_environment(settings: Settings) -> dict[str, str]:
    """`settings` as environment variables, so a child process builds the very same Settings."""
    return {name.upper(): str(value) for name, value in settings.model_dump().items()}


def dags_test(settings: Settings, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Migrate the metadata database, then run `airflow dags test <dag_id>` once.

    Returns the last finished process, output captured. Every setting, including the Kafka topic
    and the Mongo database, reaches the DAG through the environment.
    """
    environment = {
        **os.environ,
        **settings_environment(settings),
        **airflow_environment(settings, metadata_database(settings)),
    }
    for args in (["db", "migrate"], ["dags", "test", settings.dag_id]):
        process = subprocess.run(
            [str(AIRFLOW), *args],
            env=environment,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if process.returncode != 0:
            break
    return process


def main() -> None:
    settings = get_settings()
    environment = {**os.environ, **airflow_environment(settings, metadata_database(settings))}
    write_passwords_file(settings)
    print(
        f"airflow: UI http://{HOST}:{settings.airflow_port} (login {settings.airflow_admin_user} / "
        f"{settings.airflow_admin_password}); home {airflow_home(settings)}; "
        f"DAG {settings.dag_id} every 2 minutes",
        flush=True,
    )
    # Replace this process, so honcho's signals reach Airflow directly.
    os.execve(AIRFLOW, [str(AIRFLOW), "standalone"], environment)  # noqa: S606


if __name__ == "__main__":
    main()
