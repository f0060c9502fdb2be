"""A Spark standalone cluster on loopback: one master and one worker, from the pyspark wheel.

`task spark-cluster-up` starts both (`bin/spark-class` of the installed pyspark runs
`org.apache.spark.deploy.master.Master` and `...worker.Worker`), `task spark-cluster-down` stops
them and the executors the worker started. With `SPARK_MASTER=spark://127.0.0.1:7077` the stream
and the analyses run their tasks on the worker's executors instead of inside their own JVM.

Every port is on 127.0.0.1 (RPC through `--host`, the web UIs through SPARK_LOCAL_IP), the UIs'
kill links are off, and the master's REST submission server stays off: the cluster takes work
only from applications on this machine.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

from app.core.config import Settings
from app.core.process import InfraError, port_open
from app.infra.local_service import HOST, Launch, LocalService, tool

JAVA_HINT = "Install a JDK 17+ (e.g. `sudo apt-get install -y openjdk-17-jdk-headless`)."
# Master and worker UIs: no kill links (anyone reaching the port could stop the stream).
DAEMON_OPTIONS = "-Dspark.ui.killEnabled=false"


def spark_class() -> str:
    """`bin/spark-class` of the installed pyspark: the launcher of Spark's own daemons."""
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def ui_state(port: int, timeout: float = 10.0) -> dict[str, Any]:
    """What a master's or worker's web UI says of it (`/json`)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/json/", timeout=timeout) as answer:
        state: dict[str, Any] = json.load(answer)
    return state


def master_state(settings: Settings) -> dict[str, Any]:
    """The master's own view: status, workers, applications."""
    return ui_state(settings.spark_cluster_master_ui_port)


class SparkDaemon(LocalService):
    """What the master and the worker share: spark-class, loopback, a small heap."""

    start_timeout = 90.0
    role: str

    def describe(self) -> str:
        import pyspark

        return f"Spark {pyspark.__version__} standalone {self.role}"

    def daemon_environment(self, options: str) -> dict[str, str]:
        return {
            # Spark binds its web UIs to SPARK_LOCAL_IP, else to every interface.
            "SPARK_LOCAL_IP": HOST,
            "SPARK_DAEMON_MEMORY": self.settings.spark_cluster_daemon_memory,
            f"SPARK_{self.role.upper()}_OPTS": f"{DAEMON_OPTIONS} {options}".strip(),
        }

    def install(self) -> None:
        tool("java", JAVA_HINT)

    def stop(self) -> bool:
        """Stop the daemon and what it started (the worker's executors, which it kills itself
        on SIGTERM), and return once every one of those JVMs is gone: a JVM being killed holds
        its ports until its last thread ends. psutil checks each is still the same process."""
        pid = self.pid()
        family: list[psutil.Process] = []
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                daemon = psutil.Process(pid)
                family = [daemon, *daemon.children(recursive=True)]
        stopped = super().stop()
        alive = psutil.wait_procs(family, timeout=30)[1]
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=10)
        return stopped


class SparkMaster(SparkDaemon):
    name = "spark-master"
    role = "master"

    @property
    def port(self) -> int:
        return self.settings.spark_cluster_master_port

    @property
    def ports(self) -> list[int]:
        return [self.port, self.settings.spark_cluster_master_ui_port]

    def launch(self) -> Launch:
        return Launch(
            [
                spark_class(),
                "org.apache.spark.deploy.master.Master",
                *("--host", HOST, "--port", str(self.port)),
                *("--webui-port", str(self.settings.spark_cluster_master_ui_port)),
            ],
            env=self.daemon_environment("-Dspark.master.rest.enabled=false"),
            cwd=self.data_dir,
        )

    def ready(self) -> bool:
        return master_state(self.settings).get("status") == "ALIVE"


class SparkWorker(SparkDaemon):
    name = "spark-worker"
    role = "worker"

    @property
    def port(self) -> int:
        return self.settings.spark_cluster_worker_ui_port

    @property
    def work_dir(self) -> Path:
        """Executors' working folders (their logs, the application's jars)."""
        return self.data_dir / "work"

    def launch(self) -> Launch:
        settings = self.settings
        if not port_open(HOST, settings.spark_cluster_master_port):
            raise InfraError(
                f"The Spark master is not running on {settings.spark_cluster_url}, so the "
                "worker has nothing to join. Run `task spark-cluster-up`."
            )
        return Launch(
            [
                spark_class(),
                "org.apache.spark.deploy.worker.Worker",
                *("--host", HOST, "--webui-port", str(self.port)),
                *("--cores", str(settings.spark_cluster_worker_cores)),
                *("--memory", settings.spark_cluster_worker_memory),
                *("--work-dir", str(self.work_dir)),
                settings.spark_cluster_url,
            ],
            env={
                **self.daemon_environment(
                    # Each application copies its jars (~650 MB with the AWS SDK) into its
                    # executors' folders: remove those of finished applications after an hour.
                    "-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval=600 "
                    "-Dspark.worker.cleanup.appDataTtl=3600"
                ),
                "SPARK_LOCAL_DIRS": str(self.data_dir / "tmp"),
            },
            # The executors work in `work_dir`: every JVM of the cluster runs in its data folder.
            cwd=self.data_dir,
        )

    def ready(self) -> bool:
        return self.registered(master_state(self.settings))

    def registered(self, state: dict[str, Any]) -> bool:
        """The master lists this worker (by its UI port) as alive."""
        return any(
            worker.get("state") == "ALIVE"
            and worker.get("webuiaddress", "").endswith(f":{self.port}")
            for worker in state.get("workers", [])
        )

    def executors(self) -> list[dict[str, Any]]:
        """The executors the worker runs now, each with the id of its application (`appid`)."""
        executors: list[dict[str, Any]] = ui_state(self.port)["executors"]
        return executors

    def stop(self) -> bool:
        stopped = super().stop()
        # Each executor's copy of the connector jars (~650 MB) is of no use once it is gone,
        # and the worker's own cleanup runs only while it runs; the executors' logs stay.
        for jar in self.work_dir.glob("app-*/*/*.jar"):
            jar.unlink(missing_ok=True)
        return stopped


def cluster(settings: Settings) -> list[SparkDaemon]:
    """The cluster's daemons in start order."""
    return [SparkMaster(settings), SparkWorker(settings)]


def cluster_up(settings: Settings) -> list[str]:
    """Start the master, then the worker (each left alone if already running)."""
    lines = []
    for daemon in cluster(settings):
        lines.append(f"{daemon.name:<12} {daemon.start()}")
    lines.append(
        f"master {settings.spark_cluster_url} (UI http://{HOST}:"
        f"{settings.spark_cluster_master_ui_port}/), worker UI http://{HOST}:"
        f"{settings.spark_cluster_worker_ui_port}/; run the stream there with "
        f"SPARK_MASTER={settings.spark_cluster_url}"
    )
    return lines


def cluster_down(settings: Settings) -> list[str]:
    """Stop the worker (and its executors), then the master."""
    return [
        f"{daemon.name:<12} {'stopped' if daemon.stop() else 'was not running'}"
        for daemon in reversed(cluster(settings))
    ]
