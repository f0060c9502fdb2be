"""`task analyze`: run both analysis notebooks headless and keep the executed copies.

    .venv/bin/python -m app.analysis.run [--now 2026-11-27T10:15:00Z] [--output reports]

First checks that PostgreSQL answers and that the lake holds purchases, and says plainly what to do
if not. Then runs `notebooks/01_purchases_analysis.ipynb` (the four answers; writes the repeat
purchases to PostgreSQL) and `notebooks/02_repeat_purchases_sql.ipynb` (SQL over that table) with
papermill, passing the lake's path and "now" as parameters. Connection settings reach the notebooks
through the environment, never as parameters. Each executed notebook, an HTML copy and an
answers-only HTML (no code cells) land in `<output>/<run time>/`; what the kernel and Spark print
on stderr goes to `kernel.log` there, not into the reports. The exit status is 1 if a check or
any cell fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from app.analysis.purchases import parse_now
from app.core.clients import postgres_connection, s3_filesystem
from app.core.config import ROOT, Settings, get_settings
from app.core.errors import LabError
from app.core.logs import setup_logging

NOTEBOOKS = ROOT / "notebooks"
PURCHASES_NOTEBOOK = NOTEBOOKS / "01_purchases_analysis.ipynb"
REPEAT_SQL_NOTEBOOK = NOTEBOOKS / "02_repeat_purchases_sql.ipynb"


class AnalysisError(LabError):
    """A reason the analysis cannot run or did not finish, worded for the person who ran it."""


@dataclass(frozen=True)
class Report:
    notebook: Path
    html: Path
    # The same report with the answers only: no code cells.
    summary: Path


def check_postgres(settings: Settings) -> None:
    """Raise AnalysisError unless the analytics database accepts a connection."""
    try:
        postgres_connection(settings).close()
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AnalysisError(
            f"Cannot connect to PostgreSQL at {settings.postgres_host}:{settings.postgres_port} "
            f"(database {settings.postgres_database}, user {settings.postgres_user}): {reason}. "
            "Run `task infra-up` if it is not running, or check the POSTGRES_* settings."
        ) from None


def lake_files(settings: Settings) -> list[str]:
    """The Parquet files under the lake's purchases folder; AnalysisError if S3 does not answer."""
    root = f"{settings.s3_bucket}/{settings.s3_purchases_prefix}"
    try:
        fs = s3_filesystem(settings)
        # Listing the bucket raises on no answer; `exists` would just say False.
        fs.ls(settings.s3_bucket)
        return [path for path in fs.find(root) if path.endswith(".parquet")]
    except FileNotFoundError:
        raise AnalysisError(
            f"The S3 bucket {settings.s3_bucket!r} does not exist at {settings.s3_endpoint_url}. "
            "Run `task infra-up` (it creates the bucket)."
        ) from None
    except PermissionError as exc:
        raise AnalysisError(
            f"S3 at {settings.s3_endpoint_url} refused the lab's credentials ({exc}). "
            "Check S3_ACCESS_KEY and S3_SECRET_KEY."
        ) from None
    except Exception as exc:  # botocore and aiohttp raise many types for "no answer"
        raise AnalysisError(
            f"S3 is not reachable at {settings.s3_endpoint_url} ({type(exc).__name__}: {exc}). "
            "Run `task infra-up`, or check S3_ENDPOINT_URL."
        ) from None


@contextmanager
def stderr_to(log: Path) -> Iterator[None]:
    """Point this process's stderr (file descriptor 2) at `log` for the block.

    The kernel and Spark's JVM inherit it: their start-up warnings and shutdown noise go to the
    log beside the reports instead of the person's terminal.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with log.open("ab") as file:
            os.dup2(file.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def move_stderr_to_log(notebook: Path, log: Path) -> int:
    """Take the cells' stderr outputs (JVM and log4j warnings the kernel captured) out of the
    executed notebook and append them to `log`; return how many were moved."""
    import nbformat

    document = nbformat.read(str(notebook), as_version=4)  # type: ignore[no-untyped-call]
    moved = []
    for cell in document.cells:
        outputs = cell.get("outputs", [])
        noise = [o for o in outputs if o.get("output_type") == "stream" and o["name"] == "stderr"]
        if noise:
            moved += [
                f"[{notebook.name}, cell {cell.get('execution_count')}]\n{o['text']}" for o in noise
            ]
            cell["outputs"] = [o for o in outputs if o not in noise]
    if moved:
        with log.open("a", encoding="utf-8") as file:
            file.write("\n".join(moved) + "\n")
        nbformat.write(document, str(notebook))  # type: ignore[no-untyped-call]
    return len(moved)


def execute(source: Path, target: Path, parameters: dict[str, Any], log: Path) -> Report:
    """Run one notebook with papermill into `target`, then export HTML beside it: the whole
    notebook (`<name>.html`) and the answers without code (`<name>.summary.html`).

    The executed notebook and its HTML are written even when a cell fails (the error shows in
    place); the failure is then raised as AnalysisError.
    """
    import papermill
    from nbconvert import HTMLExporter
    from papermill.exceptions import PapermillExecutionError

    failure: str | None = None
    try:
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(ROOT),  # so the kernel imports the lab's `app` package
            progress_bar=False,
        )
    except PapermillExecutionError as exc:
        failure = f"{source.name} failed in cell [{exc.exec_count}]: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # the kernel died or did not start: nbclient raises several types
        failure = f"{source.name} did not run: {type(exc).__name__}: {exc}"
    html = target.with_suffix(".html")
    summary = target.with_suffix(".summary.html")
    if target.exists():
        move_stderr_to_log(target, log)
        for path, exclude_input in ((html, False), (summary, True)):
            exporter = HTMLExporter(  # type: ignore[no-untyped-call]
                exclude_input=exclude_input, exclude_input_prompt=exclude_input
            )
            body, _ = exporter.from_filename(str(target))
            path.write_text(body, encoding="utf-8")
    if failure:
        where = f" The executed notebook shows the error: {html}" if target.exists() else ""
        raise AnalysisError(failure + "." + where)
    return Report(target, html, summary)


def analyze(settings: Settings, now: datetime, output: Path) -> list[Report]:
    """Check the services and the lake, then run both notebooks into a new folder of `output`."""
    check_postgres(settings)
    files = lake_files(settings)
    if not files:
        raise AnalysisError(
            f"The lake has no purchases yet: no Parquet files under {settings.purchases_url}. "
            "Start the lab (`task up`), let the generator send orders and the Spark stream land "
            f"its first batch (every {settings.spark_trigger_interval}), then run "
            "`task analyze` again."
        )
    print(f"lake: {len(files)} Parquet files under {settings.purchases_url}")
    folder = output / datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    folder.mkdir(parents=True, exist_ok=True)
    reports = []
    runs: list[tuple[Path, dict[str, Any]]] = [
        (PURCHASES_NOTEBOOK, {"purchases_url": settings.purchases_url, "now": now.isoformat()}),
        (REPEAT_SQL_NOTEBOOK, {}),
    ]
    log = folder / "kernel.log"
    for source, parameters in runs:
        print(f"running {source.name} (kernel and Spark messages: {log}) ...", flush=True)
        with stderr_to(log):
            reports.append(execute(source, folder / source.name, parameters, log))
    return reports


def main(argv: list[str] | None = None) -> int:
    setup_logging("analyze", get_settings())
    parser = argparse.ArgumentParser(
        prog="task analyze", description="Run the analysis notebooks headless into reports."
    )
    parser.add_argument(
        "--now",
        default="",
        help="the analysis's 'now' for 'the last hour', ISO 8601 with a zone (default: current)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "reports",
        help="folder for the executed notebooks and their HTML (default: reports/)",
    )
    args = parser.parse_args(argv)
    try:
        now = parse_now(args.now)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        reports = analyze(get_settings(), now, args.output.resolve())
    except AnalysisError as exc:
        print(f"analyze: {exc}", file=sys.stderr)
        return 1
    print(f"analysis as of {now.isoformat()}; reports:")
    for report in reports:
        print(f"  {report.summary}  (answers only)\n  {report.html}\n  {report.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
