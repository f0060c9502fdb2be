"""`infra-up` refuses a running Kafka of another cluster size, including nodes that carry the
names of the size asked for but run on another size's storage (two nodes, then three asked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from app.core.config import Settings
from app.infra.kafka import kafka_nodes, kafka_of_another_size


def _record(settings: Settings, name: str, pid: int) -> None:
    path = settings.lab_home / "run" / f"{name}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n{psutil.Process(pid).create_time()}")


def _started(config_file: Path) -> subprocess.Popen[str]:
    """A process whose command line names `config_file`, returned once it runs: read between
    fork and exec, the child's command line is still the parent's."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; print(flush=True); time.sleep(60)", str(config_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()
    return process


def test_a_node_named_as_ours_on_another_size_storage_is_another_cluster(tmp_path: Path) -> None:
    three = Settings.model_construct(lab_home=tmp_path, kafka_brokers=3)
    two = three.model_copy(update={"kafka_brokers": 2})
    ours, theirs = kafka_nodes(three)[0], kafka_nodes(two)[1]
    # kafka-1 as the three-node cluster runs it; kafka-2 started with the two-node one's config.
    mine, other = _started(ours.config_file), _started(theirs.config_file)
    try:
        _record(three, "kafka-1", mine.pid)
        _record(three, "kafka-2", other.pid)
        assert kafka_of_another_size(three) == ["kafka-2"]
        assert kafka_of_another_size(two) == ["kafka-1"]
        # The single broker (`kafka`) running is another size for both.
        _record(three, "kafka", mine.pid)
        assert "kafka" in kafka_of_another_size(three)
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
