"""`task analyze` end to end: `python -m app.analysis.run` against the real S3 and PostgreSQL.

Each test hands its isolated settings (own S3 prefix, own table) to the subprocess through
environment variables, exactly as a person's `.env` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg2 import sql

from app.analysis.repeat_store import COLUMNS
from app.core.clients import postgres_connection, s3_filesystem
from app.core.config import ROOT, Settings
from tests.analysis.conftest import discard
from tests.analysis.dataset import (
    NOW,
    reference_orders,
    reference_repeat_purchases,
    retried_rows,
    write_lake,
)
from tests.support import make_isolated_settings


def analyze(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.analysis.run", *args],
        env={**os.environ, **settings.as_environment()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _lake_root(settings: Settings) -> str:
    return f"{settings.s3_bucket}/{settings.s3_purchases_prefix}".rstrip("/")


def _outputs(notebook: Path) -> str:
    """Everything the executed notebook printed or displayed, as one string."""
    cells = json.loads(notebook.read_text())["cells"]
    return json.dumps([cell.get("outputs", []) for cell in cells])


def test_analyze_end_to_end(scope_settings: Settings, tmp_path: Path) -> None:
    """The known lake with a retried and a changed order: the report lists the one conflict, and
    the table counts each OrderId once."""
    write_lake(retried_rows(), _lake_root(scope_settings), s3_filesystem(scope_settings))

    result = analyze(scope_settings, "--now", NOW.isoformat(), "--output", str(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    reports = sorted(tmp_path.glob("*/*"))
    assert [path.name for path in reports] == [
        "01_purchases_analysis.html",
        "01_purchases_analysis.ipynb",
        "01_purchases_analysis.summary.html",
        "02_repeat_purchases_sql.html",
        "02_repeat_purchases_sql.ipynb",
        "02_repeat_purchases_sql.summary.html",
        "kernel.log",
    ]
    for path in reports:
        assert str(path) in result.stdout, "the run says where each report is"

    one, two = reports[1], reports[4]
    # JVM and log4j warnings stay in the kernel log, out of the reports.
    assert '"name": "stderr"' not in one.read_text()
    assert "WARN" in reports[-1].read_text()
    summary = reports[2].read_text()
    assert "Most preferred: <strong>CreditCard</strong>" in summary
    assert "build_spark_session" not in summary, "the answers-only report has no code"
    assert "build_spark_session" in reports[0].read_text()
    assert NOW.isoformat() in one.read_text(), "'now' reaches the notebook as a parameter"
    shown = _outputs(one)
    assert '"output_type": "error"' not in shown
    assert "O-erin-59" in shown and "O-erin-61" not in shown
    assert "Most preferred: **CreditCard**" in shown
    assert "image/png" in shown, "the charts are drawn"
    assert "ORDER BY repeat_customers DESC" in _outputs(two)
    assert "**24** rows, **19** orders" in shown
    assert "Warning: 1 `OrderId`s arrived with different content" in shown

    expected = reference_repeat_purchases(reference_orders(retried_rows()))
    conn = postgres_connection(scope_settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY user_id, product_id").format(
                    sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
                    sql.Identifier(scope_settings.repeat_purchases_table),
                )
            )
            stored: list[tuple[Any, ...]] = cur.fetchall()
    finally:
        conn.close()
    assert stored == [
        (r.user_id, r.product_id, r.order_count, r.total_quantity, *times)
        for r in expected.itertuples()
        for times in [(r.first_purchase_at.to_pydatetime(), r.last_purchase_at.to_pydatetime())]
    ]


def test_analyze_says_so_when_the_lake_is_empty(scope_settings: Settings, tmp_path: Path) -> None:
    empty = make_isolated_settings(scope_settings)
    result = analyze(empty, "--output", str(tmp_path))
    discard(empty)
    assert result.returncode == 1
    assert "The lake has no purchases yet" in result.stderr
    assert empty.purchases_url in result.stderr and "task up" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir()), "no notebook runs without data"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"postgres_port": 1}, "Cannot connect to PostgreSQL at 127.0.0.1:1"),
        ({"s3_endpoint_url": "http://127.0.0.1:1"}, "S3 is not reachable at http://127.0.0.1:1"),
    ],
)
def test_analyze_says_which_service_does_not_answer(
    scope_settings: Settings, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    result = analyze(scope_settings.model_copy(update=change), "--output", str(tmp_path))
    assert result.returncode == 1
    assert message in result.stderr and "task infra-up" in result.stderr
    assert "Traceback" not in result.stderr


def test_analyze_fails_when_a_cell_fails(scope_settings: Settings, tmp_path: Path) -> None:
    """A lake of another shape makes notebook 1 fail: exit 1, the cell named, the report kept."""
    broken = make_isolated_settings(scope_settings)
    fs = s3_filesystem(broken)
    with fs.open(f"{_lake_root(broken)}/part-0.parquet", "wb") as file:
        pq.write_table(pa.table({"OrderId": ["O-1"]}), file)
    try:
        result = analyze(broken, "--output", str(tmp_path))
    finally:
        discard(broken)

    assert result.returncode == 1
    assert "01_purchases_analysis.ipynb failed in cell" in result.stderr
    assert "AnalysisException" in result.stderr or "UNRESOLVED_COLUMN" in result.stderr
    (html,) = tmp_path.glob("*/01_purchases_analysis.html")
    assert str(html) in result.stderr
    assert not list(tmp_path.glob("*/02_*")), "notebook 2 does not run on a failed notebook 1"


def test_analyze_refuses_a_now_without_zone(scope_settings: Settings) -> None:
    result = analyze(scope_settings, "--now", "2026-03-01T12:00:00")
    assert result.returncode == 2
    assert "no time zone" in result.stderr
