"""The connector jars: resolved with Maven for the installed pyspark, cached, never duplicated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import get_settings
from app.lake.jars import ensure_jars, jar_coordinates, wheel_runtime


def _artifact_versions(jars: list[Path]) -> dict[str, str]:
    return dict(filter(None, (jar_coordinates(jar.name) for jar in jars)))


def test_the_cached_jars_match_the_installed_pyspark() -> None:
    connectors = ensure_jars(get_settings())
    runtime = wheel_runtime()
    versions = _artifact_versions(connectors.for_session(kafka=True))
    assert versions["hadoop-aws"] == runtime.hadoop_version
    assert versions[f"spark-sql-kafka-0-10_{runtime.scala_binary_version}"] == (
        runtime.spark_version
    )
    assert "bundle" in versions  # the AWS SDK v2 that hadoop-aws is built against
    assert "kafka-clients" in versions
    # Whatever the wheel ships is used from the wheel, never a second copy on the classpath.
    assert not set(versions) & set(runtime.shipped_artifacts())
    assert all(jar.is_file() for jar in connectors.for_session(kafka=True))
    assert not any("kafka" in jar.name for jar in connectors.for_session(kafka=False)), (
        "a session that only reads the lake gets no Kafka jars"
    )


def test_a_fresh_lab_home_resolves_once_then_uses_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings().model_copy(update={"lab_home": tmp_path})
    first = ensure_jars(settings)  # Maven, from the local repository or Maven Central
    assert (first.cache_dir / "manifest.json").is_file()
    assert first.cache_dir.is_relative_to(tmp_path / "jars")
    bundle = next(jar for jar in first.jars["s3a"] if jar.name.startswith("bundle-"))
    assert bundle.stat().st_nlink >= 2, "the 600 MB SDK bundle should be a hard link, not a copy"

    with monkeypatch.context() as patched:
        patched.setenv("PATH", str(tmp_path / "no-tools-here"))
        assert ensure_jars(settings) == first  # no Maven needed once cached

    bundle.unlink()  # a damaged cache is resolved again, not used
    assert ensure_jars(settings).jars == first.jars
    assert bundle.is_file()


def test_missing_maven_is_reported_in_one_sentence(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.lake.jars"],
        env={**os.environ, "LAB_HOME": str(tmp_path), "PATH": str(tmp_path / "empty")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "Maven (`mvn`) is not installed" in result.stdout
    assert "sudo apt-get install -y maven" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
