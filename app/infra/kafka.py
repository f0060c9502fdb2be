"""Apache Kafka as a local process: a single KRaft node (broker + controller) from Maven jars."""

from __future__ import annotations

import base64
import hashlib
import uuid
from pathlib import Path

from app.core.config import ROOT
from app.core.process import InfraError, port_open, run
from app.infra.service import HOST, Launch, LocalService, tool

KAFKA_DIR = ROOT / "infra" / "kafka"


class Kafka(LocalService):
    name = "kafka"
    start_timeout = 120.0

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def ports(self) -> list[int]:
        return [self.port, self.settings.kafka_controller_port]

    def describe(self) -> str:
        return f"Apache Kafka {self.settings.kafka_version} (KRaft, jars)"

    @property
    def lib_dir(self) -> Path:
        # Keyed by version and pom content: the copy plugin never deletes stale jars, so a
        # changed pom resolves into a fresh folder instead of mixing two sets of jars.
        digest = hashlib.sha256((KAFKA_DIR / "pom.xml").read_bytes()).hexdigest()[:8]
        return self.home / "kafka" / f"lib-{self.settings.kafka_version}-{digest}"

    @property
    def config_file(self) -> Path:
        return self.home / "kafka" / "server.properties"

    def install(self) -> None:
        tool("java", "Install a JDK 17+ (e.g. `sudo apt-get install -y openjdk-17-jdk-headless`).")
        done = self.lib_dir / ".complete"
        if done.exists():
            return
        mvn = tool("mvn", "Install Maven (e.g. `sudo apt-get install -y maven`); it fetches Kafka.")
        run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(KAFKA_DIR / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.lib_dir}",
                f"-Dkafka.version={self.settings.kafka_version}",
            ],
            what=f"fetching Apache Kafka {self.settings.kafka_version} jars with Maven",
            log=self.files.log,
            timeout=1800,
        )
        if not any(self.lib_dir.glob("kafka_2.13-*.jar")):
            raise InfraError(f"Maven finished but no Kafka jar is in {self.lib_dir}.")
        done.touch()

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xms256m",
            f"-Xmx{self.settings.kafka_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            # C1 only: half the start-up CPU on a small machine, no loss measured under load.
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.xml'}",
            "-cp",
            f"{self.lib_dir}/*",
            main,
            *args,
        ]

    def prepare(self) -> None:
        template = (KAFKA_DIR / "server.properties.template").read_text()
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            template.format(
                data_dir=self.data_dir,
                port=self.port,
                controller_port=self.settings.kafka_controller_port,
            )
        )
        if (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return  # formatted once; formatting again would refuse or wipe the cluster id
        cluster_id = "-"
        while cluster_id.startswith("-"):  # a leading dash would read as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(self.config_file),
            ),
            what="formatting Kafka storage",
            log=self.files.log,
            timeout=120,
        )

    def launch(self) -> Launch:
        return Launch(argv=self._java("kafka.Kafka", str(self.config_file)))

    def ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        # The client logs every refused connection; ask it only once the port is open.
        if not port_open(HOST, self.port):
            return False
        admin = AdminClient({"bootstrap.servers": f"{HOST}:{self.port}"})
        metadata = admin.list_topics(timeout=3)
        return bool(metadata.brokers)
