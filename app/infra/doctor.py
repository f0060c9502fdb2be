"""`task doctor`: check what the lab needs (Python, Java, Maven, Go or Docker, free ports, disk)
and say how to fix each failure."""

from __future__ import annotations

import shutil
import subprocess
import sys

from app.core.config import ROOT, Settings
from app.core.process import port_open
from app.infra.local_service import HOST
from app.infra.mode import docker_engine_answers
from app.infra.services import local_services


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
