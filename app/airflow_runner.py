"""`python -m app.airflow_runner`: Airflow 3 for the lab (the Procfile's line).

It runs what `airflow standalone` runs (scheduler, DAG processor, API server, triggerer) as its
own children, because standalone cannot be told two things the lab needs:
- no log servers: the scheduler's and the triggerer's serve task logs on every interface (ports
  8793/8794, the host is not configurable). Logs are local files the API server reads itself,
  so the components run with `--skip-serve-logs` and only the UI/API port listens (loopback).
- a component that exits (PostgreSQL restarted under the scheduler, say) is started again with
  backoff, saying so, instead of the lab carrying on without it; this process stays up, so
  honcho keeps the rest of the lab running.

One readable terminal: each component writes to its own file, `.lab/logs/airflow-<name>.log`
(and `airflow db migrate` to `airflow-migrate.log`); what reaches `task up`'s terminal is one
line per finished task with its summary (`TaskReport`, from the REST API), a component's exit
with the last lines of its file, and this process's own lines.

- `AIRFLOW_HOME` is `<lab_home>/airflow` (git-ignored); the DAGs folder is this repository's
  `dags/`; no example DAGs; new DAGs start unpaused, so the pipeline runs every 2 minutes from
  the first start.
- Airflow's metadata lives in PostgreSQL, in a database of its own (`POSTGRES_AIRFLOW_DATABASE`,
  created when missing). Only when PostgreSQL is not reachable does it fall back to SQLite under
  `AIRFLOW_HOME`, and says so.
- The UI and API listen on 127.0.0.1:`AIRFLOW_PORT`; the login is `AIRFLOW_ADMIN_USER` /
  `AIRFLOW_ADMIN_PASSWORD` (Airflow's simple auth manager, which reads passwords from a 0600
  file this module writes from the settings). The password is never printed.
- `AIRFLOW_HOME` is private (0700): Airflow writes its generated secret keys into `airflow.cfg`.
- Airflow's loops are paced for the lab (`QUIET_SETTINGS`: the scheduler's idle sleep, the
  heartbeats, how often an unchanged DAG file is parsed again): two thirds of the CPU of
  Airflow's defaults idle, three quarters under the DAG, runs as punctual and as short.
  Any of those variables in the environment wins.

`dags_test` runs `airflow dags test` with the same environment, for the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app.core.airflow_api import AirflowClient
from app.core.config import ROOT, Settings, get_settings
from app.core.logs import setup_logging
from app.core.process import kill_tree, log_tail, private_dir

HOST = "127.0.0.1"
# What `airflow standalone` runs, without the log servers (see the module docstring).
COMPONENTS = {
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "api-server": ["api-server"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
# Airflow's loops are paced for a cluster of many DAGs; the lab runs two on two cores it shares
# with Kafka, Spark and the API, and idle Airflow took 3.2 CPU-s a minute. Each value is a
# default: the same variable in the environment wins. bench/bench_airflow.py measures both.
QUIET_SETTINGS = {
    # The scheduler's loop runs every second while it has nothing to do, and a task running counts
    # as nothing to do: a run falling due and a task finishing are only seen at the next turn.
    # Every 2 s halves the idle queries and adds at most 2 s per step to a run (creation, each
    # task's start and end); 5 s cut more CPU but made a run 10 s longer, and a run's time under
    # load is what the 2-minute interval is short of.
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "2",
    # The scheduler's, DAG processor's and triggerer's heartbeats (a database write each, every
    # 5 s): every 10 s stays within a third of the 30 s after which /monitor/health calls a
    # component unhealthy, on a loaded machine too.
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "10",
    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "10",
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "10",
    # Tasks without a heartbeat are failed after 5 minutes; looking for them every 10 s buys
    # nothing over every 30 s. No DAG of the lab defers, so trigger time-outs are rare as well.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "30",
    "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "60",
    # Each parse of a DAG file forks a process that imports it, every 30 s by default. A file
    # changed since its last parse is parsed again at once whatever this says (the processor
    # compares modification times every second), so an edit still shows within seconds; an
    # unchanged file is parsed every 10 minutes.
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
    # The lab has two DAG files: one parsing process at a time is enough.
    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
}
MAX_BACKOFF_SECONDS = 30
STABLE_SECONDS = 60.0
# Under honcho's 5 s grace, so the runner ends by itself (status 0) rather than by its SIGKILL.
STOP_TIMEOUT_SECONDS = 3.5
VENV_BIN = Path(sys.executable).parent
AIRFLOW = VENV_BIN / "airflow"
# How often finished tasks are looked up, and which states are finished.
REPORT_SECONDS = 10.0
FINISHED = ("success", "failed", "upstream_failed")


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
    path = private_dir(airflow_home(settings)) / "simple_auth_manager_passwords.json"
    path.touch(mode=0o600)
    path.chmod(0o600)
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
        # No line per API request: the console asks twice every 2 s, which would bury the
        # scheduler's and the tasks' lines in `task up`. Set the variable to see them again.
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": os.environ.get(
            "AIRFLOW__LOGGING__NAMESPACE_LEVELS", "http.access=WARNING"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
            home / "simple_auth_manager_passwords.json"
        ),
        # DAG files and tasks import the lab's package; components start `airflow` from PATH.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
        **{name: os.environ.get(name, value) for name, value in QUIET_SETTINGS.items()},
    }


def dags_test(
    settings: Settings, timeout: float = 600, migrate: bool = True, dag_id: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Migrate the metadata database (unless `migrate` is false), then run
    `airflow dags test <dag_id>` once (the pipeline's DAG unless `dag_id` names another).

    Returns the last finished process, output captured. Every setting, including the Kafka topic
    and the Mongo database, reaches the DAG through the environment.
    """
    environment = {
        **os.environ,
        **settings.as_environment(),
        **airflow_environment(settings, metadata_database(settings)),
    }
    steps = [["db", "migrate"]] if migrate else []
    for args in [*steps, ["dags", "test", dag_id or settings.dag_id]]:
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


def component_log(logs: Path, name: str) -> Path:
    return logs / f"airflow-{name}.log"


def _start_component(
    argv: list[str], environment: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        return subprocess.Popen(
            argv, env=environment, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )


def run_components(
    environment: dict[str, str],
    logs: Path,
    components: dict[str, list[str]] | None = None,
    every_tick: Callable[[], None] | None = None,
) -> None:
    """Run `components` (name: command line; Airflow's COMPONENTS by default), each writing to
    its file in `logs`, until SIGTERM or SIGINT; start again any that exits, after 1, 2, 4...
    up to MAX_BACKOFF_SECONDS. `every_tick` is called about every 0.2 s between checks."""
    components = components or {name: [str(AIRFLOW), *args] for name, args in COMPONENTS.items()}
    logs.mkdir(parents=True, exist_ok=True)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    running: dict[str, subprocess.Popen[bytes]] = {}
    restarts = dict.fromkeys(components, 0)
    due = dict.fromkeys(components, 0.0)
    started_at: dict[str, float] = {}
    while not stopping:
        now = time.monotonic()
        for name, argv in components.items():
            process = running.get(name)
            if process is not None and process.poll() is not None:
                del running[name]
                # A component that ran a while before exiting starts over at the shortest wait.
                if now - started_at[name] > STABLE_SECONDS:
                    restarts[name] = 0
                wait = min(2 ** restarts[name], MAX_BACKOFF_SECONDS)
                restarts[name] += 1
                due[name] = now + wait
                log = component_log(logs, name)
                print(
                    f"airflow: {name} exited (code {process.returncode}); starting it again in "
                    f"{wait} s. The last lines of {log}:\n{log_tail(log, 10)}",
                    flush=True,
                )
            if name not in running and now >= due[name]:
                running[name] = _start_component(argv, environment, component_log(logs, name))
                started_at[name] = now
        if every_tick is not None:
            every_tick()
        time.sleep(0.2)  # a stop request is noticed within 0.2 s
    for process in running.values():
        process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for name, process in running.items():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            print(
                f"airflow: {name} did not stop within {STOP_TIMEOUT_SECONDS:g} s: killed, with "
                "the processes it ran (a task cut short runs again in the next DAG run).",
                flush=True,
            )


class TaskReport:
    """One line per task of the lab's DAGs that finished since this process started, with what
    it returned (the drain's, the counts refresh's, the compaction's summaries), read from
    Airflow's REST API every `REPORT_SECONDS` by `tick`. Quiet while the API server is not
    answering yet."""

    def __init__(self, settings: Settings) -> None:
        self.task_logs = airflow_home(settings) / "logs"
        self.http = httpx.Client()
        self.api = AirflowClient(settings, self.http)
        self.since = datetime.now(UTC).isoformat()
        self.due = 0.0
        self.reported: set[tuple[str, str, str, int, int]] = set()

    def tick(self) -> None:
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + REPORT_SECONDS
        try:
            for line in self.lines():
                print(f"airflow: {line}", flush=True)
        except (httpx.HTTPError, KeyError, ValueError):
            pass  # the API server is starting or restarting: the next tick catches up

    def lines(self) -> list[str]:
        found = self.api.get(
            "/dags/~/dagRuns/~/taskInstances",  # every DAG's
            end_date_gte=self.since,
            state=list(FINISHED),
            order_by="end_date",
            limit=100,
        )
        lines = []
        for ti in found.get("task_instances", []):
            key = (ti["dag_id"], ti["dag_run_id"], ti["task_id"], ti["map_index"], ti["try_number"])
            if key in self.reported:
                continue
            self.reported.add(key)
            self.since = max(self.since, ti["end_date"])
            lines.append(self.describe(ti))
        return lines

    def describe(self, ti: dict[str, Any]) -> str:
        index = f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""
        run = ti["dag_run_id"].split("__")[0]
        line = f"{ti['task_id']}{index} ({run} run) {ti['state']} in {ti['duration'] or 0:.1f} s"
        if ti["state"] != "success":
            return (
                f"{line}, try {ti['try_number']}: its log is in the UI and under {self.task_logs}"
            )
        entry = self.api.get(
            f"/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/{ti['task_id']}"
            "/xcomEntries/return_value",
            map_index=ti["map_index"],
            deserialize=True,
        )
        return f"{line}: {summary_text(entry.get('value'))}"

    def close(self) -> None:
        self.http.close()


# The figures of the tasks' summaries, in the order a person reads them; others follow.
SUMMARY_ORDER = [
    "consumed",
    "stored",
    "events_counted",
    "pairs_written",
    "new_pairs",
    "duplicates",
    "already_stored",
    "quarantined",
    "resets",
    "went_back",
    "lost_offsets",
    "gaps",
    "left",
    "batches",
    "stopped",
]


def summary_text(value: object) -> str:
    """A task's return value on one line: a summary's non-zero figures (its time is the task's
    duration already), a list as it is."""
    if not isinstance(value, dict):
        return str(value)
    rank = {key: index for index, key in enumerate(SUMMARY_ORDER)}
    shown = [
        # A list in a summary (the drain's gaps) is counted here; the task's log has it whole.
        f"{key} {len(value[key]) if isinstance(value[key], list) else value[key]}"
        for key in sorted(value, key=lambda key: (rank.get(key, len(rank)), key))
        if key != "seconds" and value[key] not in (0, 0.0, None, "", [], {})
    ]
    return ", ".join(shown) or "nothing to do"


def main() -> None:
    setup_logging("airflow", get_settings())
    settings = get_settings()
    environment = {**os.environ, **airflow_environment(settings, metadata_database(settings))}
    passwords = write_passwords_file(settings)
    logs = settings.lab_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    migrate_log = component_log(logs, "migrate")
    with migrate_log.open("wb") as out:
        migrate = subprocess.run(
            [str(AIRFLOW), "db", "migrate"],
            env=environment,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if migrate.returncode != 0:
        sys.exit(
            f"airflow: `airflow db migrate` failed; its last lines ({migrate_log}):\n"
            f"{log_tail(migrate_log, 15)}\nCheck PostgreSQL with `task infra-status`, then "
            "start the lab again."
        )
    print(
        f"airflow: UI http://{HOST}:{settings.airflow_port} - user {settings.airflow_admin_user}, "
        f"password in {passwords} (AIRFLOW_ADMIN_PASSWORD); DAG {settings.dag_id} every 2 "
        f"minutes; one line per finished task here, Airflow's own logs in "
        f"{component_log(logs, '<component>')}",
        flush=True,
    )
    report = TaskReport(settings)
    try:
        run_components(environment, logs, every_tick=report.tick)
    finally:
        report.close()


if __name__ == "__main__":
    main()
