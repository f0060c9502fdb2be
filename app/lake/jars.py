"""The connector jars Spark needs beyond the pip wheel, resolved once with Maven and cached.

The pyspark wheel ships Spark and the Hadoop client but neither the Kafka source
(`spark-sql-kafka-0-10`) nor the s3a filesystem (`hadoop-aws` and the AWS SDK v2 bundle). Spark's
own `spark.jars.packages` resolver (Ivy) cannot always reach Maven Central, while `mvn` can, so
`infra/spark/pom.xml` resolves them with Maven; the jars are hard-linked (copied across devices)
into `<lab_home>/jars/<spark version>/<connector>/` with a manifest, and later runs only check the
manifest. Versions come from the installed wheel, never from a second hand-kept list: hadoop-aws
is resolved for the exact Hadoop release inside the wheel, and anything the wheel already ships
(hadoop-client, scala-library, lz4, slf4j...) is left out so the wheel's copy is the only one.

`python -m app.lake.jars` resolves (if needed) and prints what is in the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.core.config import ROOT, Settings, get_settings
from app.core.process import InfraError, run

POM = ROOT / "infra" / "spark" / "pom.xml"
CONNECTORS = ("kafka", "s3a")
# A jar file name is `<artifactId>-<version>[-<classifier>].jar`. The version is the last
# `-<digits>.<digits>...`, since artifact ids hold digits too (`spark-sql-kafka-0-10_2.13`,
# `log4j-1.2-api`); checked against the pom.properties of every jar in the wheel.
_JAR_NAME = re.compile(r"^(?P<artifact>.+)-(?P<version>\d+\.\d+[^-]*)(?:-[^.]*)?\.jar$")


@dataclass(frozen=True)
class WheelRuntime:
    """What the installed pyspark wheel runs: the versions every connector jar must match."""

    spark_version: str
    scala_binary_version: str
    hadoop_version: str
    jars_dir: Path

    def shipped_artifacts(self) -> list[str]:
        names = [jar_coordinates(jar.name) for jar in self.jars_dir.glob("*.jar")]
        return sorted({name[0] for name in names if name})


@dataclass(frozen=True)
class ConnectorJars:
    runtime: WheelRuntime
    cache_dir: Path
    jars: dict[str, list[Path]]

    def for_session(self, *, kafka: bool) -> list[Path]:
        """The jars of one Spark session: always s3a, Kafka only when the session streams."""
        return [*self.jars["s3a"], *(self.jars["kafka"] if kafka else [])]

    def summary(self) -> list[str]:
        runtime = self.runtime
        lines = [
            f"pyspark {runtime.spark_version} (Scala {runtime.scala_binary_version}, "
            f"Hadoop {runtime.hadoop_version}); connector jars in {self.cache_dir}"
        ]
        for connector in CONNECTORS:
            for jar in self.jars[connector]:
                lines.append(f"  {connector:<5} {jar.name} ({jar.stat().st_size / 2**20:.1f} MiB)")
        return lines


def jar_coordinates(file_name: str) -> tuple[str, str] | None:
    """(artifact id, version) of a Maven jar file name, None if it does not look like one."""
    match = _JAR_NAME.match(file_name)
    return (match["artifact"], match["version"]) if match else None


def _version_of(jars_dir: Path, artifact: str) -> str:
    for jar in jars_dir.glob(f"{artifact}-*.jar"):
        coordinates = jar_coordinates(jar.name)
        if coordinates and coordinates[0] == artifact:
            return coordinates[1]
    raise InfraError(
        f"The pyspark installation has no {artifact} jar in {jars_dir}, so the connector "
        "versions cannot be chosen. Reinstall pyspark from pip "
        "(`.venv/bin/pip install --force-reinstall pyspark`)."
    )


def wheel_runtime() -> WheelRuntime:
    import pyspark

    jars_dir = Path(pyspark.__file__).parent / "jars"
    scala = _version_of(jars_dir, "scala-library")
    return WheelRuntime(
        spark_version=pyspark.__version__,
        scala_binary_version=".".join(scala.split(".")[:2]),
        hadoop_version=_version_of(jars_dir, "hadoop-client-api"),
        jars_dir=jars_dir,
    )


def cache_dir(settings: Settings, runtime: WheelRuntime) -> Path:
    return settings.lab_home / "jars" / runtime.spark_version


def _manifest_key(runtime: WheelRuntime) -> dict[str, str]:
    return {
        "spark": runtime.spark_version,
        "scala": runtime.scala_binary_version,
        "hadoop": runtime.hadoop_version,
    }


def _cached(directory: Path, runtime: WheelRuntime) -> dict[str, list[Path]] | None:
    """The cached jars if the manifest matches this wheel and every file is still there."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("runtime") != _manifest_key(runtime):
        return None
    jars = {
        connector: [directory / connector / name for name in manifest["jars"].get(connector, [])]
        for connector in CONNECTORS
    }
    if not all(jars.values()) or not all(jar.is_file() for group in jars.values() for jar in group):
        return None
    return jars


def _maven_classpath(connector: str, runtime: WheelRuntime, output: Path) -> list[Path]:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError(
            "Maven (`mvn`) is not installed; it fetches the Spark connector jars (Kafka source, "
            "s3a). Install it (Debian/Ubuntu: `sudo apt-get install -y maven`, macOS: "
            "`brew install maven`) and run `task install`."
        )
    try:
        run(
            [
                mvn,
                "-q",
                "-B",
                "-Dstyle.color=never",
                "-f",
                str(POM),
                f"-P{connector}",
                "dependency:build-classpath",
                f"-Dmdep.outputFile={output}",
                f"-Dspark.version={runtime.spark_version}",
                f"-Dscala.binary.version={runtime.scala_binary_version}",
                f"-Dhadoop.version={runtime.hadoop_version}",
                f"-DexcludeArtifactIds={','.join(runtime.shipped_artifacts())}",
            ],
            what=f"resolving the Spark {connector} connector jars with Maven",
            timeout=1800,
        )
    except InfraError as exc:
        raise InfraError(
            f"{exc}\nMaven could not fetch the {connector} connector for Spark "
            f"{runtime.spark_version} / Hadoop {runtime.hadoop_version}. Check that Maven Central "
            "(or the mirror in ~/.m2/settings.xml) is reachable, then run `task install` again."
        ) from exc
    return [Path(entry) for entry in output.read_text().strip().split(os.pathsep) if entry]


def _check_versions(jars: dict[str, list[Path]], runtime: WheelRuntime) -> None:
    """hadoop-aws must be built for the Hadoop inside the wheel, or s3a fails at run time."""
    s3a = [jar_coordinates(jar.name) for jar in jars["s3a"]]
    aws = [found[1] for found in s3a if found and found[0] == "hadoop-aws"]
    if aws != [runtime.hadoop_version]:
        raise InfraError(
            f"hadoop-aws {aws or 'missing'} does not match Hadoop {runtime.hadoop_version} inside "
            f"pyspark {runtime.spark_version}; s3a would fail with NoSuchMethodError. Check "
            f"{POM} and the cache folder, then run `task install` again."
        )
    kafka = [jar.name for jar in jars["kafka"] if jar.name.startswith("spark-sql-kafka")]
    if not any(runtime.spark_version in name for name in kafka):
        raise InfraError(
            f"spark-sql-kafka for Spark {runtime.spark_version} is missing from the resolved jars "
            f"({kafka or 'none'}). Check {POM}, then run `task install` again."
        )


def _link(source: Path, target: Path) -> None:
    # A hard link keeps the ~600 MB AWS SDK bundle stored once; copy when on another device.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """One resolver at a time (parallel tests, the stream and a notebook starting together)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory.parent / f"{directory.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_jars(settings: Settings) -> ConnectorJars:
    """The connector jars for the installed pyspark: from the cache, else resolved with Maven."""
    runtime = wheel_runtime()
    directory = cache_dir(settings, runtime)
    cached = _cached(directory, runtime)
    if cached is not None:
        return ConnectorJars(runtime, directory, cached)
    with _lock(directory):
        cached = _cached(directory, runtime)
        if cached is not None:
            return ConnectorJars(runtime, directory, cached)
        jars: dict[str, list[Path]] = {}
        for connector in CONNECTORS:
            target = directory / connector
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            resolved = _maven_classpath(connector, runtime, directory / f"{connector}.classpath")
            for source in resolved:
                _link(source, target / source.name)
            jars[connector] = [target / source.name for source in resolved]
        _check_versions(jars, runtime)
        manifest = {
            "runtime": _manifest_key(runtime),
            "jars": {connector: [jar.name for jar in group] for connector, group in jars.items()},
            "resolved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        staged = directory / "manifest.json.tmp"
        staged.write_text(json.dumps(manifest, indent=2) + "\n")
        staged.replace(directory / "manifest.json")
    return ConnectorJars(runtime, directory, jars)


def main() -> int:
    started = time.monotonic()
    try:
        connectors = ensure_jars(get_settings())
    except InfraError as exc:
        print(f"error: {exc}")
        return 1
    for line in connectors.summary():
        print(line)
    print(f"ready in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
