"""Credentials (issue 11, section 3): PostgreSQL trusts no connection, secrets are private."""

from __future__ import annotations

import stat
from pathlib import Path

import psycopg2
import pytest

from app.airflow_runner import airflow_home, write_passwords_file
from app.core.clients import postgres_connection
from app.core.config import Settings
from app.infra.mode import resolve_mode
from app.infra.postgres import Postgres
from app.infra.services import local_services


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_postgres_asks_every_connection_for_its_password(lab_services: Settings) -> None:
    """The rules the server loaded (both modes): SCRAM or peer, never trust or plain text."""
    conn = postgres_connection(lab_services, "postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT type, auth_method, error FROM pg_hba_file_rules")
            rules = cur.fetchall()
    finally:
        conn.close()
    assert rules and all(error is None for _, _, error in rules), rules
    assert {method for _, method, _ in rules} <= {"scram-sha-256", "peer"}, rules


def test_local_postgres_refuses_its_socket_without_a_password(lab_services: Settings) -> None:
    if resolve_mode(lab_services) != "local":
        pytest.fail("this test needs LAB_INFRA_MODE=local (the lab's own cluster)")
    postgres = Postgres(lab_services)
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(
            host=str(postgres.socket_dir),
            port=lab_services.postgres_port,
            user=lab_services.postgres_user,
            dbname="postgres",
            connect_timeout=5,
        )
    assert _mode(postgres.socket_dir) == 0o700
    assert _mode(postgres.data_dir) == 0o700
    assert _mode(postgres.data_dir / "pg_hba.conf") == 0o600
    for service in local_services(lab_services):
        assert _mode(service.data_dir) == 0o700, f"{service.data_dir} is readable by others"
    leftovers = list((lab_services.lab_home / "run").glob("initdb-*"))
    assert not leftovers, f"initdb's password file was left behind: {leftovers}"


def test_airflow_password_file_is_private(lab_services: Settings, tmp_path: Path) -> None:
    settings = lab_services.model_copy(
        update={"lab_home": tmp_path, "airflow_admin_password": "s3cret"}
    )
    home = airflow_home(settings)
    home.mkdir(mode=0o755)
    path = write_passwords_file(settings)
    assert path.read_text() == '{"admin": "s3cret"}'
    assert _mode(path) == 0o600
    assert _mode(home) == 0o700, "Airflow keeps its generated secret keys in airflow.cfg here"
