"""The compose file, .env.example and the settings agree on names, ports and credentials."""

from __future__ import annotations

import re
from typing import Any

import yaml

from app.core.config import ROOT, Settings
from app.infra.compose import compose_environment


def _compose(environment: dict[str, str]) -> dict[str, Any]:
    """infra/compose.yml as compose reads it with `environment` (`${NAME:-fallback}` only)."""

    def substitute(match: re.Match[str]) -> str:
        return environment.get(match["name"]) or match["fallback"] or ""

    text = (ROOT / "infra" / "compose.yml").read_text()
    text = re.sub(r"(?<!\$)\$\{(?P<name>\w+)(?::-(?P<fallback>[^}]*))?\}", substitute, text)
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def _published(service: dict[str, Any]) -> set[int]:
    ports = set()
    for mapping in service.get("ports", []):
        host, published, _ = str(mapping).split(":")
        assert host == "127.0.0.1", f"{mapping} must publish on 127.0.0.1 only"
        ports.add(int(published))
    return ports


def _assert_compose_serves(settings: Settings, environment: dict[str, str]) -> None:
    services = _compose(environment)["services"]
    assert _published(services["kafka"]) == {settings.kafka_port}
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert advertised == f"PLAINTEXT://127.0.0.1:{settings.kafka_port}"
    assert _published(services["mongo"]) == {settings.mongo_port}
    assert _published(services["minio"]) == {settings.s3_port}
    assert _published(services["postgres"]) == {settings.postgres_port}
    postgres = services["postgres"]["environment"]
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]) == (
        settings.postgres_user,
        settings.postgres_password,
        settings.postgres_database,
    )
    minio = services["minio"]["environment"]
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (
        settings.s3_access_key,
        settings.s3_secret_key,
    )


def test_compose_fallbacks_are_the_default_settings() -> None:
    _assert_compose_serves(Settings.model_construct(), environment={})


def test_compose_takes_ports_and_credentials_from_the_lab_settings() -> None:
    settings = Settings.model_construct(
        kafka_bootstrap_servers="127.0.0.1:19092",
        mongo_url="mongodb://127.0.0.1:27117",
        s3_endpoint_url="http://127.0.0.1:19000",
        postgres_port=15432,
        postgres_user="analyst",
        postgres_password="not-the-default",
        s3_access_key="lake-user",
        s3_secret_key="lake-secret",
    )
    _assert_compose_serves(settings, compose_environment(settings))


def test_compose_services_are_pinned_durable_and_restarted() -> None:
    compose = _compose({})
    for name, service in compose["services"].items():
        image, _, tag = service["image"].partition(":")
        assert tag and tag != "latest", f"{name}: pin {image} to a version"
        assert service.get("restart") == "unless-stopped", f"{name} must come back by itself"
        assert "healthcheck" in service, f"{name} needs a health check"
        assert service.get("volumes"), f"{name} needs a named volume"
    assert set(compose["volumes"]) == {
        "kafka-data",
        *(f"kafka-{node}-data" for node in (1, 2, 3)),
        "mongo-data",
        "minio-data",
        "postgres-data",
    }


def test_env_example_lists_every_setting_with_its_default() -> None:
    from scripts.write_env_example import render

    assert (ROOT / ".env.example").read_text() == render(), (
        ".env.example is out of date: run `python scripts/write_env_example.py`"
    )


def test_settings_read_the_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    monkeypatch.setenv("S3_PURCHASES_PREFIX", "/elsewhere")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.kafka_port == 19092
    assert s.purchases_url == f"s3a://{s.s3_bucket}/elsewhere/"


def test_three_brokers_derive_the_bootstrap_list_and_the_replication() -> None:
    s = Settings.model_construct(kafka_bootstrap_servers="127.0.0.1:19092", kafka_brokers=3)
    assert s.kafka_servers == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert s.kafka_node_ports == [(19092, 9093), (19094, 9095), (19096, 9097)]
    assert (s.kafka_replicas, s.kafka_min_insync_replicas) == (3, 2)
    one = Settings.model_construct()
    assert (one.kafka_servers, one.kafka_replicas, one.kafka_min_insync_replicas) == (
        "127.0.0.1:9092",
        1,
        1,
    )
    # A cluster of other hosts is named as it is, never expanded.
    listed = "kafka-a:9092,kafka-b:9092,kafka-c:9092"
    assert Settings.model_construct(kafka_bootstrap_servers=listed).kafka_servers == listed


def test_a_replication_factor_above_the_broker_count_is_refused_with_what_to_set(
    monkeypatch: Any,
) -> None:
    import pydantic
    import pytest

    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("KAFKA_BROKERS", "1")
    with pytest.raises(pydantic.ValidationError, match="set KAFKA_BROKERS=3"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_replication_factor_below_the_cluster_default_is_warned_about() -> None:
    kept = Settings.model_construct(kafka_brokers=3, kafka_replication_factor=1)
    assert kept.kafka_replication_warning is not None
    assert "losing one broker can lose acknowledged records" in kept.kafka_replication_warning
    assert "follows KAFKA_BROKERS: 3" in kept.kafka_replication_warning
    for fine in (
        Settings.model_construct(kafka_brokers=3),
        Settings.model_construct(kafka_brokers=3, kafka_replication_factor=3),
        Settings.model_construct(kafka_brokers=1, kafka_replication_factor=1),
    ):
        assert fine.kafka_replication_warning is None


def test_each_local_node_is_a_voter_with_the_cluster_replication() -> None:
    from app.infra.kafka import Kafka, kafka_nodes

    single = Kafka(Settings.model_construct()).server_properties()
    for line in (
        "node.id=1",
        "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
        "controller.quorum.bootstrap.servers=127.0.0.1:9093",
        "offsets.topic.replication.factor=1",
        "min.insync.replicas=1",
    ):
        assert line in single.splitlines()
    nodes = kafka_nodes(Settings.model_construct(kafka_brokers=3))
    assert [node.name for node in nodes] == ["kafka-1", "kafka-2", "kafka-3"]
    assert len({node.data_dir for node in nodes}) == 3
    second = nodes[1].server_properties().splitlines()
    for line in (
        "node.id=2",
        "listeners=PLAINTEXT://127.0.0.1:9094,CONTROLLER://127.0.0.1:9095",
        "controller.quorum.bootstrap.servers=127.0.0.1:9093,127.0.0.1:9095,127.0.0.1:9097",
        "offsets.topic.replication.factor=3",
        "min.insync.replicas=2",
        "transaction.state.log.min.isr=2",
    ):
        assert line in second


def test_compose_cluster_profile_publishes_the_local_mode_ports() -> None:
    settings = Settings.model_construct(kafka_bootstrap_servers="127.0.0.1:19092", kafka_brokers=3)
    environment = compose_environment(settings)
    assert environment["COMPOSE_PROFILES"] == "kafka-cluster"
    services = _compose(environment)["services"]
    for node, (port, _) in enumerate(settings.kafka_node_ports, 1):
        service = services[f"kafka-{node}"]
        assert service["profiles"] == ["kafka-cluster"]
        assert _published(service) == {port}
        advertised = service["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        assert advertised.startswith(f"PLAINTEXT://127.0.0.1:{port},")
        assert service["environment"]["KAFKA_NODE_ID"] == node
    assert services["kafka"]["profiles"] == ["kafka-single"]
