"""`task infra-status`: each service (each Kafka node, the Spark cluster), its state, pid, port
and log, in either mode."""

from __future__ import annotations

import json

from app.core.config import Settings
from app.core.process import port_open
from app.infra.compose import compose
from app.infra.local_service import HOST, LocalService
from app.infra.mode import resolve_mode
from app.infra.services import local_services
from app.infra.spark_cluster import cluster


def status_rows(settings: Settings) -> list[dict[str, object]]:
    mode = resolve_mode(settings)
    rows: list[dict[str, object]] = []
    if mode == "docker":
        out = compose(settings, "ps", "--format", "json", timeout=60)
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


def print_rows(rows: list[dict[str, object]]) -> None:
    for row in rows:
        pid = f"pid {row['pid']}" if row.get("pid") else ""
        port = f"port {row['port']}" if row.get("port") else ""
        print(
            f"{row['service']!s:<12} {row['state']!s:<8} {pid:<10} {port:<10} "
            f"{row['mode']!s:<48} {row['log']}"
        )


def status(settings: Settings) -> None:
    """The four services, then the (optional) Spark standalone cluster."""
    print_rows(status_rows(settings) + spark_cluster_rows(settings))
