"""Docker mode: `docker compose` on `infra/compose.yml` with the lab's settings substituted."""

from __future__ import annotations

from app.core.config import ROOT, Settings
from app.core.process import InfraError, run

COMPOSE_FILE = ROOT / "infra" / "compose.yml"
# The compose profile that runs Kafka, by KAFKA_BROKERS.
COMPOSE_KAFKA_PROFILES = {1: "kafka-single", 3: "kafka-cluster"}


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


def compose(settings: Settings, *args: str, timeout: float = 600) -> str:
    return run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), *args],
        what=f"docker compose {' '.join(args)}",
        env=compose_environment(settings),
        timeout=timeout,
    )
