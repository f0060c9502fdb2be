"""`python -m app.infra up|down|status|doctor`: the lab's four services, with or without Docker.

`spark-cluster-up|spark-cluster-down|spark-cluster-status`: the optional Spark standalone cluster
(`app.infra.spark_cluster`), always local processes.

`up` picks Docker Compose when a Docker engine answers and local processes otherwise
(`LAB_INFRA_MODE=docker|local` forces one), waits for every service, then bootstraps topics,
bucket, indexes and tables. It is idempotent: services already up are left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from app.core.config import ROOT, Settings, get_settings
from app.core.errors import LabError
from app.core.process import InfraError, port_open, run
from app.infra.kafka import kafka_of_another_size, other_kafka_nodes
from app.infra.service import HOST, LocalService
from app.infra.services import local_services
from app.infra.spark_cluster import cluster, cluster_down, cluster_up

COMPOSE_FILE = ROOT / "infra" / "compose.yml"
# The compose profile that runs Kafka, by KAFKA_BROKERS.
COMPOSE_KAFKA_PROFILES = {1: "kafka-single", 3: "kafka-cluster"}


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=8,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def mode_file(settings: Settings) -> Path:
    return settings.lab_home / "run" / "infra-mode"


def resolve_mode(settings: Settings) -> str:
    """The mode in use: the one recorded by `up`, else the configured one, else auto-detected."""
    if settings.lab_infra_mode != "auto":
        return settings.lab_infra_mode
    recorded = mode_file(settings)
    if recorded.exists():
        return recorded.read_text().strip()
    return "docker" if docker_engine_answers() else "local"


def compose_environment(settings: Settings) -> dict[str, str]:
    """What compose substitutes into `infra/compose.yml`: every setting (so `.env` and exported
    variables apply) plus the ports the settings derive from their URLs."""
    if settings.kafka_brokers not in COMPOSE_KAFKA_PROFILES:
        raise InfraError(
            f"infra/compose.yml runs Kafka as one node or three, not KAFKA_BROKERS="
            f"{settings.kafka_brokers}: set KAFKA_BROKERS=1 or 3 (or LAB_INFRA_MODE=local)."
        )
    return {
        **settings.as_environment(),
        "COMPOSE_PROFILES": COMPOSE_KAFKA_PROFILES[settings.kafka_brokers],
        "KAFKA_PORT": str(settings.kafka_port),
        **{
            f"KAFKA_NODE{node}_PORT": str(port)
            for node, (port, _) in enumerate(settings.kafka_node_ports, 1)
            if node > 1
        },
        "MONGO_PORT": str(settings.mongo_port),
        "S3_PORT": str(settings.s3_port),
    }


def _compose(settings: Settings, *args: str, timeout: float = 600) -> str:
    return run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), *args],
        what=f"docker compose {' '.join(args)}",
        env=compose_environment(settings),
        timeout=timeout,
    )


@contextlib.contextmanager
def infra_lock(settings: Settings) -> Iterator[None]:
    """One `up`/`down` at a time, even from parallel test runs or terminals."""
    path = settings.lab_home / "run" / "infra.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def up(settings: Settings) -> None:
    with infra_lock(settings):
        _up(settings)


def _up(settings: Settings) -> None:
    mode = resolve_mode(settings)
    started = time.monotonic()
    print(f"infra-up: {mode} mode (data and logs under {settings.lab_home})")
    if mode == "docker":
        _compose(settings, "up", "-d", "--wait")
    else:
        _refuse_another_kafka_size(settings)
        for service in local_services(settings):
            print(f"  {service.name:<9} {service.describe():<40} ...", end="", flush=True)
            outcome = service.start()
            print(f" {outcome}")
    mode_file(settings).parent.mkdir(parents=True, exist_ok=True)
    mode_file(settings).write_text(mode)

    from app.infra.bootstrap import bootstrap

    for line in bootstrap(settings):
        print(f"  bootstrap: {line}")
    print(f"infra-up: all four services ready in {time.monotonic() - started:.1f} s")


def _refuse_another_kafka_size(settings: Settings) -> None:
    running = kafka_of_another_size(settings)
    if running:
        raise InfraError(
            f"Kafka of another cluster size is running ({', '.join(running)}), not the "
            f"KAFKA_BROKERS={settings.kafka_brokers} one asked for. Stop it first with "
            f"`task infra-down` (it stops every size), then run `task infra-up` again."
        )


def install(settings: Settings) -> None:
    """Fetch and build what the lab runs (no-op for what is cached): the local services' jars
    and binaries in local mode, and Spark's connector jars in both modes."""
    if resolve_mode(settings) == "local":
        for service in local_services(settings):
            started = time.monotonic()
            service.install()
            took = time.monotonic() - started
            print(f"  {service.name:<9} {service.describe():<40} {took:.1f} s")
    from app.lake.jars import ensure_jars

    started = time.monotonic()
    ensure_jars(settings)
    took = time.monotonic() - started
    print(f"  {'spark':<9} {'connector jars (Kafka source, s3a)':<40} {took:.1f} s")
    from app.infra.browser import ensure_chromium

    started = time.monotonic()
    try:
        browser = str(ensure_chromium().browser)
    except InfraError as exc:  # only the console's browser test drives it
        print(f"  {'chromium':<9} not installed: {exc}")
    else:
        took = time.monotonic() - started
        print(f"  {'chromium':<9} {browser:<40} {took:.1f} s")


def down(settings: Settings) -> None:
    with infra_lock(settings):
        _down(settings)


def _down(settings: Settings) -> None:
    mode = resolve_mode(settings)
    if mode == "docker":
        # Every profile: a cluster of the size used before stops too.
        profiles = [arg for name in COMPOSE_KAFKA_PROFILES.values() for arg in ("--profile", name)]
        _compose(settings, *profiles, "down")
        print("infra-down: compose services stopped (volumes kept)")
    else:
        for service in reversed(local_services(settings)):
            stopped = service.stop()
            print(f"  {service.name:<9} {'stopped' if stopped else 'was not running'}")
        for node in other_kafka_nodes(settings):  # a cluster of the size used before
            if node.stop():
                print(f"  {node.name:<9} stopped (KAFKA_BROKERS is now {settings.kafka_brokers})")
    mode_file(settings).unlink(missing_ok=True)


def status_rows(settings: Settings) -> list[dict[str, object]]:
    mode = resolve_mode(settings)
    rows: list[dict[str, object]] = []
    if mode == "docker":
        out = _compose(settings, "ps", "--format", "json", timeout=60)
        for line in out.splitlines():
            item = json.loads(line)
            rows.append(
                {
                    "service": item.get("Service"),
                    "mode": "docker",
                    "state": item.get("Health") or item.get("State"),
                    "log": f"docker compose -f infra/compose.yml logs {item.get('Service')}",
                }
            )
        return rows
    for service in local_services(settings):
        rows.append(local_row(service))
    return rows


def local_row(service: LocalService) -> dict[str, object]:
    pid = service.pid()
    return {
        "service": service.name,
        "mode": f"local: {service.describe()}",
        "state": "up" if pid and port_open(HOST, service.port) else "down",
        "pid": pid,
        "port": service.port,
        "log": str(service.files.log),
    }


def spark_cluster_rows(settings: Settings) -> list[dict[str, object]]:
    """The standalone cluster's daemons; a worker counts as up once the master lists it."""
    rows = []
    for daemon in cluster(settings):
        row = local_row(daemon)
        if row["state"] == "up":
            try:
                registered = daemon.ready()
            except OSError:  # the master's UI does not answer (yet)
                registered = False
            row["state"] = "up" if registered else "starting"
        rows.append(row)
    return rows


def _print_rows(rows: list[dict[str, object]]) -> None:
    for row in rows:
        pid = f"pid {row['pid']}" if row.get("pid") else ""
        port = f"port {row['port']}" if row.get("port") else ""
        print(
            f"{row['service']!s:<12} {row['state']!s:<8} {pid:<10} {port:<10} "
            f"{row['mode']!s:<48} {row['log']}"
        )


def status(settings: Settings) -> None:
    """The four services, then the (optional) Spark standalone cluster."""
    _print_rows(status_rows(settings) + spark_cluster_rows(settings))


def _check(ok: bool, label: str, advice: str) -> bool:
    print(f"  [{'ok' if ok else 'FAIL'}] {label}" + ("" if ok else f"\n         -> {advice}"))
    return ok


def _java_major() -> int:
    try:
        out = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=20, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    for token in out.split('"')[1:2]:
        head = token.split(".")[0]
        return int(head) if head.isdigit() else 0
    return 0


def doctor(settings: Settings) -> bool:
    print("doctor: checking what the lab needs")
    results = [
        _check(
            sys.version_info >= (3, 11),
            f"Python {sys.version.split()[0]} (3.11+)",
            "install Python 3.11 or newer",
        ),
        _check(
            _java_major() >= 17,
            f"Java {_java_major() or 'missing'} (17+, for Kafka and Spark)",
            "install a JDK 17+, e.g. `sudo apt-get install -y openjdk-17-jdk-headless`",
        ),
    ]
    engine = docker_engine_answers()
    print(f"  [info] Docker engine: {'answers' if engine else 'not available -> local processes'}")
    results.append(
        _check(
            shutil.which("mvn") is not None,
            "Maven (fetches Spark's connector jars, and Kafka's in local mode)",
            "install Maven, e.g. `sudo apt-get install -y maven`",
        )
    )
    if not engine or settings.lab_infra_mode == "local":
        results += [
            _check(
                shutil.which("go") is not None or shutil.which("mongod") is not None,
                "Go (builds FerretDB when no mongod is on PATH)",
                "install Go 1.22+ or put a `mongod` on PATH",
            ),
        ]
    mine = {port for s in local_services(settings) if s.pid() is not None for port in s.ports}
    kafka_ports = [
        (f"Kafka node {node}" + (" controller" if controller else ""), port)
        for node, ports in enumerate(settings.kafka_node_ports, 1)
        for controller, port in enumerate(ports)
    ]
    for label, port in [
        ("API", settings.api_port),
        *kafka_ports,
        ("MongoDB", settings.mongo_port),
        ("S3", settings.s3_port),
        ("PostgreSQL", settings.postgres_port),
        ("Airflow", settings.airflow_port),
    ]:
        busy = port_open(HOST, port) and port not in mine
        results.append(
            _check(
                not busy or label in {"API", "Airflow"},
                f"port {port} ({label}) "
                + ("is taken by another program" if busy else "free or ours"),
                f"free it (`ss -ltnp 'sport = :{port}'`) or change the port in .env",
            )
        )
    disk = shutil.disk_usage(ROOT)
    results.append(
        _check(
            disk.free > 5 * 2**30,
            f"{disk.free / 2**30:.0f} GiB free disk",
            "the lab needs about 5 GiB",
        )
    )
    ok = all(results)
    print("doctor: all good" if ok else "doctor: fix the items marked FAIL")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.infra", description=__doc__)
    parser.add_argument(
        "command",
        choices=[
            "install",
            "up",
            "down",
            "status",
            "doctor",
            "bootstrap",
            "spark-cluster-up",
            "spark-cluster-down",
            "spark-cluster-status",
        ],
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        if args.command == "install":
            install(settings)
        elif args.command == "up":
            up(settings)
        elif args.command == "down":
            down(settings)
        elif args.command == "status":
            status(settings)
        elif args.command == "spark-cluster-up":
            print("\n".join(cluster_up(settings)))
        elif args.command == "spark-cluster-down":
            print("\n".join(cluster_down(settings)))
        elif args.command == "spark-cluster-status":
            _print_rows(spark_cluster_rows(settings))
        elif args.command == "bootstrap":
            from app.infra.bootstrap import bootstrap

            for line in bootstrap(settings):
                print(line)
        else:
            return 0 if doctor(settings) else 1
    except LabError as exc:  # InfraError, or a topic the cluster cannot replicate
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
