"""Benchmark: Airflow's CPU per component, idle and under the 2-minute DAG, and its runs' timing.

In one run, for each configuration (the lab's settings from `app.airflow_runner`, then the same
with Airflow's own defaults for the settings the runner tunes, as `AIRFLOW__*` variables):

1. `python -m app.airflow_runner` starts on a free port with an Airflow home, a metadata
   database and topics of its own; once its API answers, the DAG is paused;
2. idle: CPU seconds per minute of each component (scheduler, dag-processor, api-server,
   triggerer, the task processes, the runner) over `--idle` seconds, no DAG run;
3. the DAG unpaused for `--busy` seconds: the same per minute, and each run's delay (its start
   after the time it was due) and duration against the 2-minute interval (empty topics: the
   runs' own cost, not their data's).

CPU comes from the process trees as bench_soak counts it (`CpuBudget`). The machine is shared:
compare the two configurations of one run, and read the load averages printed beside them.

    .venv/bin/python bench/bench_airflow.py [--idle 120] [--busy 300] [--only lab|defaults]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_soak import CpuBudget

from app.airflow_runner import QUIET_SETTINGS
from app.core.clients import postgres_connection
from app.core.config import ROOT, Settings, get_settings
from app.infra.bootstrap import bootstrap
from tests.support import free_port, make_isolated_settings, remove_isolated, stop_group

DAG_INTERVAL = 120.0
START_TIMEOUT = 300.0


def airflow_defaults() -> dict[str, str]:
    """Airflow's own defaults for the settings the runner tunes, as environment variables."""
    from airflow.configuration import conf

    defaults = {}
    for variable in QUIET_SETTINGS:
        _, section, key = variable.lower().split("__")
        defaults[variable] = str(conf.get_default_value(section, key))
    return defaults


def wait_for_api(settings: Settings, runner: subprocess.Popen[bytes]) -> str:
    """A JWT for the lab's login, once the API server answers."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if runner.poll() is not None:
            raise SystemExit(f"the Airflow runner exited ({runner.returncode})")
        try:
            response = httpx.post(
                f"{settings.airflow_url}/auth/token",
                json={
                    "username": settings.airflow_admin_user,
                    "password": settings.airflow_admin_password,
                },
                timeout=5,
            )
            if response.status_code in (200, 201):
                token: str = response.json()["access_token"]
                return token
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit(f"Airflow's API did not answer within {START_TIMEOUT:.0f} s")


def set_paused(settings: Settings, token: str, paused: bool) -> None:
    """Pause or unpause the DAG, once the DAG processor has stored it."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        response = httpx.patch(
            f"{settings.airflow_url}/api/v2/dags/{settings.dag_id}",
            json={"is_paused": paused},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        if response.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"cannot pause the DAG: {response.status_code} {response.text}")
        time.sleep(2)


def runs(settings: Settings) -> list[tuple[datetime, float, float | None]]:
    """(when it was due, seconds after that it started, duration or None) of each DAG run."""
    conn = postgres_connection(settings, settings.postgres_airflow_database)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT run_after, start_date - run_after, end_date - start_date FROM dag_run "
                "WHERE dag_id = %s AND start_date IS NOT NULL ORDER BY run_after",
                (settings.dag_id,),
            )
            return [
                (due, late.total_seconds(), took.total_seconds() if took else None)
                for due, late, took in cur.fetchall()
            ]
    finally:
        conn.close()


def per_minute(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    return {
        name: (after[name] - before.get(name, 0.0)) * 60 / seconds
        for name in after
        if name != "this bench (sampling)"
    }


def measure(base: Settings, name: str, extra: dict[str, str], idle: float, busy: float) -> None:
    tag = f"af{uuid.uuid4().hex[:8]}"
    home = Path(tempfile.mkdtemp(prefix="lab-airflow-"))
    settings = make_isolated_settings(base, tag).model_copy(
        update={"lab_home": home, "airflow_port": free_port()}
    )
    try:
        bootstrap(settings)
        runner = subprocess.Popen(
            [sys.executable, "-m", "app.airflow_runner"],
            cwd=ROOT,
            env={**os.environ, **settings.as_environment(), **extra},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            token = wait_for_api(settings, runner)
            set_paused(settings, token, True)
            time.sleep(20)  # the start-up's parsing and a run already started settle
            cpu = CpuBudget([("Airflow runner", runner.pid)])
            start = cpu.read()
            time.sleep(idle)
            idled = cpu.read()
            idle_load = os.getloadavg()[0]
            set_paused(settings, token, False)
            unpaused = datetime.now(UTC)
            time.sleep(busy)
            busied = cpu.read()
            busy_load = os.getloadavg()[0]
            done = runs(settings)
        finally:
            stop_group(runner, signal.SIGTERM, timeout=30)
    finally:
        remove_isolated(settings)
        shutil.rmtree(home, ignore_errors=True)
    quiet = per_minute(start, idled, idle)
    working = per_minute(idled, busied, busy)
    print(f"\n{name}: CPU seconds per minute (load {idle_load:.1f} idle, {busy_load:.1f} busy)")
    print(f"  {'component':<24} {'idle':>6} {'DAG':>6}")
    for component in sorted(working, key=lambda c: -working[c]):
        print(f"  {component:<24} {quiet.get(component, 0.0):>6.2f} {working[component]:>6.2f}")
    print(f"  {'all':<24} {sum(quiet.values()):>6.2f} {sum(working.values()):>6.2f}")
    for due, late, took in done:
        state = f"took {took:.1f} s" if took is not None else "still running"
        # The first run starts with the DAG, before the pause holds it; one more falls due while
        # the DAG is paused and starts when it is unpaused.
        paused = "  (due before the unpause: not judged)" if due < unpaused else ""
        print(
            f"  run started {late:.1f} s after it was due, {state} (interval "
            f"{DAG_INTERVAL:.0f} s){paused}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=float, default=120.0, help="seconds measured idle")
    parser.add_argument("--busy", type=float, default=300.0, help="seconds with the DAG on")
    parser.add_argument("--only", choices=("lab", "defaults"), help="one configuration")
    args = parser.parse_args()
    base = get_settings()
    print(f"bench_airflow: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start")
    configurations = {
        "lab": ("the lab's settings", {}),
        "defaults": ("Airflow's defaults", airflow_defaults()),
    }
    for key, (name, extra) in configurations.items():
        if args.only in (None, key):
            measure(base, name, extra, args.idle, args.busy)


if __name__ == "__main__":
    main()
