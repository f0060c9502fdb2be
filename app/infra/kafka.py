"""Apache Kafka as local processes from Maven jars: KRaft nodes, each broker and controller.

With KAFKA_BROKERS=1 one node named `kafka` (data in `data/kafka`); with N > 1 nodes `kafka-1`
.. `kafka-N`, every one a voter of the controller quorum, their data in `data/kafka-clusterN/`,
so each cluster size keeps a storage of its own and going back finds the old data as it was.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import uuid
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed

from app.core.config import MAX_KAFKA_BROKERS, ROOT, Settings
from app.core.process import InfraError, port_open, run
from app.infra.local_service import HOST, Launch, LocalService, tool

KAFKA_DIR = ROOT / "infra" / "kafka"


def _kafka_uuid() -> str:
    """A random id as Kafka writes them (url-safe base64), never with a leading dash (which
    the storage tool would read as an option)."""
    value = "-"
    while value.startswith("-"):
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    return value


class Kafka(LocalService):
    start_timeout = 120.0

    def __init__(self, settings: Settings, node: int = 1, base_name: str = "kafka") -> None:
        self.node = node
        clustered = settings.kafka_brokers > 1
        self.name = f"{base_name}-{node}" if clustered else base_name
        super().__init__(settings)
        # One folder per cluster size: nodes of another size never read this storage.
        self.cluster_dir = self.home / "data" / f"{base_name}-cluster{settings.kafka_brokers}"
        if clustered:
            self.data_dir = self.cluster_dir / f"node{node}"

    @property
    def port(self) -> int:
        return self.settings.kafka_node_ports[self.node - 1][0]

    @property
    def controller_port(self) -> int:
        return self.settings.kafka_node_ports[self.node - 1][1]

    @property
    def ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def describe(self) -> str:
        version = self.settings.kafka_version
        if self.settings.kafka_brokers == 1:
            return f"Apache Kafka {version} (KRaft, jars)"
        return f"Apache Kafka {version} node {self.node}/{self.settings.kafka_brokers} (KRaft)"

    @property
    def lib_dir(self) -> Path:
        # Keyed by version and pom content: the copy plugin never deletes stale jars, so a
        # changed pom resolves into a fresh folder instead of mixing two sets of jars.
        digest = hashlib.sha256((KAFKA_DIR / "pom.xml").read_bytes()).hexdigest()[:8]
        return self.home / "kafka" / f"lib-{self.settings.kafka_version}-{digest}"

    @property
    def config_file(self) -> Path:
        """Rendered at every start: a cluster's node next to its data."""
        if self.settings.kafka_brokers > 1:
            return self.data_dir / "server.properties"
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

    def server_properties(self) -> str:
        """This node's configuration, from `infra/kafka/server.properties.template`."""
        return (
            (KAFKA_DIR / "server.properties.template")
            .read_text()
            .format(
                node_id=self.node,
                data_dir=self.data_dir,
                port=self.port,
                controller_port=self.controller_port,
                quorum=",".join(f"{HOST}:{c}" for _, c in self.settings.kafka_node_ports),
                replicas=self.settings.kafka_replicas,
                min_insync=self.settings.kafka_min_insync_replicas,
            )
        )

    def prepare(self) -> None:
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.server_properties())
        if (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return  # formatted once; formatting again would refuse or wipe the cluster id
        if self.settings.kafka_brokers == 1:
            cluster_id, quorum = _kafka_uuid(), ["--standalone"]
        else:
            cluster_id, voters = self._cluster_identity()
            quorum = ["--initial-controllers", voters]
        run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                *quorum,
                "-t",
                cluster_id,
                "-c",
                str(self.config_file),
            ),
            what="formatting Kafka storage",
            log=self.files.log,
            timeout=120,
        )

    def _cluster_identity(self) -> tuple[str, str]:
        """The cluster id and the initial voters (`id@host:port:directory-id`) every node of
        the cluster is formatted with: made by the first node formatted, read by the others."""
        path = self.cluster_dir / "identity.json"
        if not path.exists():
            nodes = range(1, self.settings.kafka_brokers + 1)
            identity = {"cluster_id": _kafka_uuid(), "directories": [_kafka_uuid() for _ in nodes]}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(identity))
        identity = json.loads(path.read_text())
        voters = ",".join(
            f"{node}@{HOST}:{controller}:{directory}"
            for node, ((_, controller), directory) in enumerate(
                zip(self.settings.kafka_node_ports, identity["directories"], strict=True), 1
            )
        )
        return identity["cluster_id"], voters

    def launch(self) -> Launch:
        return Launch(argv=self._java("kafka.Kafka", str(self.config_file)))

    def ready(self) -> bool:
        """A lone node answers metadata. A cluster's node cannot serve before a quorum forms, so
        the nodes before the last are ready once their controller listens, and the last once
        every broker of the cluster is registered."""
        from confluent_kafka.admin import AdminClient

        brokers = self.settings.kafka_brokers
        if self.node < brokers:
            return port_open(HOST, self.controller_port)
        # The client logs every refused connection; ask it only once the port is open.
        if not port_open(HOST, self.port):
            return False
        admin = AdminClient({"bootstrap.servers": f"{HOST}:{self.port}", "log_level": 2})
        metadata = admin.list_topics(timeout=3)
        return len(metadata.brokers) >= brokers


def kafka_nodes(settings: Settings) -> list[Kafka]:
    """The local Kafka nodes KAFKA_BROKERS asks for, in start order."""
    return [Kafka(settings, node) for node in range(1, settings.kafka_brokers + 1)]


def kafka_of_another_size(settings: Settings) -> list[str]:
    """Running local Kafka nodes that are not the cluster KAFKA_BROKERS asks for: nodes named
    for another size, and nodes named as ours but started on another size's storage
    (`kafka-1` of a two-node cluster when three are asked for)."""
    running = [node.name for node in other_kafka_nodes(settings) if node.pid() is not None]
    for node in kafka_nodes(settings):
        pid = node.pid()
        if pid is None:
            continue
        with contextlib.suppress(psutil.Error):
            if str(node.config_file) not in psutil.Process(pid).cmdline():
                running.append(node.name)
    return running


def other_kafka_nodes(settings: Settings) -> list[Kafka]:
    """Nodes named as for another cluster size (their pid files are enough to stop them)."""
    mine = {node.name for node in kafka_nodes(settings)}
    sizes = [1, MAX_KAFKA_BROKERS]  # `kafka`, and `kafka-1` .. `kafka-9`
    return [
        node
        for size in sizes
        for node in kafka_nodes(settings.model_copy(update={"kafka_brokers": size}))
        if node.name not in mine
    ]
