"""The compose file, .env.example and the settings agree on names, ports and credentials."""

from __future__ import annotations

from typing import Any

import yaml

from app.core.config import ROOT, Settings


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "infra" / "compose.yml").read_text())
    return data


def _published(service: dict[str, Any]) -> set[int]:
    ports = set()
    for mapping in service.get("ports", []):
        host, published, _ = str(mapping).split(":")
        assert host == "127.0.0.1", f"{mapping} must publish on 127.0.0.1 only"
        ports.add(int(published))
    return ports


def test_compose_services_match_the_settings() -> None:
    s = Settings.model_construct()  # the defaults, whatever the environment says
    services = _compose()["services"]
    assert s.kafka_port in _published(services["kafka"])
    assert s.mongo_port in _published(services["mongo"])
    assert s.s3_port in _published(services["minio"])
    assert s.postgres_port in _published(services["postgres"])
    env = services["postgres"]["environment"]
    assert env["POSTGRES_USER"].endswith(f":-{s.postgres_user}}}")
    assert env["POSTGRES_PASSWORD"].endswith(f":-{s.postgres_password}}}")
    assert env["POSTGRES_DB"].endswith(f":-{s.postgres_database}}}")
    minio = services["minio"]["environment"]
    assert minio["MINIO_ROOT_USER"].endswith(f":-{s.s3_access_key}}}")
    assert minio["MINIO_ROOT_PASSWORD"].endswith(f":-{s.s3_secret_key}}}")
    assert s.s3_bucket in services["minio-bucket"]["environment"]["S3_BUCKET"]
    for name in ("kafka", "mongo", "minio", "postgres"):
        assert "healthcheck" in services[name], f"{name} needs a health check"
        assert services[name].get("volumes"), f"{name} needs a named volume"
    assert set(_compose()["volumes"]) >= {"kafka-data", "mongo-data", "minio-data", "postgres-data"}


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
