"""`python -m app.infra up|down|status|doctor`: the lab's four services, with or without Docker.

`spark-cluster-up|spark-cluster-down|spark-cluster-status`: the optional Spark standalone cluster
(`app.infra.spark_cluster`), always local processes.

`up` picks Docker Compose when a Docker engine answers and local processes otherwise
(`LAB_INFRA_MODE=docker|local` forces one), waits for every service, then bootstraps topics,
bucket, indexes and tables. It is idempotent: services already up are left alone.
"""

from __future__ import annotations

import argparse
import sys

from app.core.config import get_settings
from app.core.errors import LabError
from app.core.logs import setup_logging
from app.infra.doctor import doctor
from app.infra.lifecycle import down, install, up
from app.infra.report import print_rows, spark_cluster_rows, status
from app.infra.spark_cluster import cluster_down, cluster_up


def main(argv: list[str] | None = None) -> int:
    setup_logging("infra", get_settings())
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
            print_rows(spark_cluster_rows(settings))
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
