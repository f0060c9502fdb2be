"""The whole lab under honcho, as `task up` runs it: every socket on loopback, and a Kafka
restart that stops nothing (issue 11, sections 2 and 4).

One honcho start serves both tests (Airflow takes a minute or two to come up). The lab runs
against a broker of its own (a spare Kafka on free ports, so stopping it disturbs no other test)
and the shared MongoDB, S3 and PostgreSQL, with names, ports, Airflow home and Airflow metadata
database of this module only; everything is removed afterwards.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from app.core.config import ROOT, Settings
from app.core.process import running_pid
from app.infra.local_service import LocalService
from app.infra.services import local_services
from app.lake.sink_log import committed_rows
from tests.support import (
    SpareKafka,
    event_store,
    free_port,
    make_isolated_settings,
    remove_isolated,
    spare_kafka,
    stop_group,
)

pytestmark = pytest.mark.slow

HONCHO = Path(sys.executable).parent / "honcho"
# The Procfile's processes, told apart by their command lines.
PROCFILE_PROCESSES = {
    "api": "app.api",
    "generator": "app.generator",
    "airflow": "app.airflow_runner",
    "spark": "app.lake",
    "console": "app.console",
}


@dataclass
class RunningLab:
    settings: Settings
    services: Settings  # the shared services' settings (their pid files)
    broker: SpareKafka
    honcho: subprocess.Popen[bytes]
    log: Path


def _wait_for(check: Callable[[], bool], what: str, timeout: float, lab: RunningLab) -> None:
    deadline = time.monotonic() + timeout
    while True:
        # A service still starting answers with errors; keep polling.
        with contextlib.suppress(Exception):
            if check():
                return
        assert lab.honcho.poll() is None, f"honcho exited while waiting for {what}:\n{_tail(lab)}"
        assert time.monotonic() < deadline, f"{what} not seen within {timeout:.0f} s:\n{_tail(lab)}"
        time.sleep(2)


def _first_answer(read: Callable[[], int], lab: RunningLab, timeout: float = 60) -> int:
    """`read()`, asked again while the broker answers with errors."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _tail(lab: RunningLab, lines: int = 60) -> str:
    return "\n".join(lab.log.read_text(errors="replace").splitlines()[-lines:])


def _airflow_healthy(settings: Settings) -> bool:
    url = f"http://127.0.0.1:{settings.airflow_port}/api/v2/monitor/health"
    health = httpx.get(url, timeout=5).json()
    components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all(health[name]["status"] == "healthy" for name in components)


def _end_offsets(settings: Settings, topic: str) -> int:
    """The sum of a topic's end offsets: how many records it has ever received."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_servers, "group.id": "x"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def _lake_rows(settings: Settings) -> int:
    return committed_rows(settings, settings.purchases_url)


def _stored_events(settings: Settings) -> int:
    return event_store(settings).events.count_documents({})


def _lab_settings(base: Settings, tag: str, home: Path) -> Settings:
    # The Airflow home (under lab_home) is this module's; the Spark jars are the lab's cache.
    (home / "jars").symlink_to(base.lab_home / "jars", target_is_directory=True)
    return base.model_copy(
        update={
            "lab_home": home,
            "api_port": free_port(),
            "airflow_port": free_port(),
            # Long and unique, so the test below can look for it in the output.
            "airflow_admin_password": f"admin-password-{tag}",
            "generator_users_per_second": 5,
            "spark_trigger_interval": "5 seconds",
        }
    )


@pytest.fixture(scope="module")
def lab(lab_services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    from app.infra.bootstrap import bootstrap

    tag = uuid.uuid4().hex[:10]
    home = tmp_path_factory.mktemp("lab-home")
    isolated = make_isolated_settings(lab_services, tag)
    with spare_kafka(isolated, f"test-{tag}") as broker:
        settings = _lab_settings(broker.settings, tag, home)
        bootstrap(settings)
        log = home / "honcho.log"
        empty_env_file = home / "honcho.env"  # the settings come from the environment below
        empty_env_file.touch()
        with log.open("wb") as out:
            honcho = subprocess.Popen(
                [HONCHO, "start", "-e", str(empty_env_file), "-f", str(ROOT / "Procfile")],
                cwd=ROOT,
                env={**os.environ, **settings.as_environment()},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = RunningLab(settings, lab_services, broker, honcho, log)
        try:
            _wait_for(lambda: _api_healthy(settings), "the API", 120, running)
            _wait_for(lambda: _airflow_healthy(settings), "Airflow healthy", 420, running)
            _wait_for(lambda: _lake_rows(settings) > 0, "orders in the lake", 300, running)
            yield running
        finally:
            _stop_honcho(honcho)
            remove_isolated(settings)
            shutil.rmtree(home / "airflow", ignore_errors=True)


def _api_healthy(settings: Settings) -> bool:
    return httpx.get(f"{settings.api_url}/health", timeout=2).status_code == 200


def _stop_honcho(honcho: subprocess.Popen[bytes]) -> None:
    """What Ctrl-C in `task up` does; the whole group is killed if that takes over 90 s."""
    stop_group(honcho, signal.SIGINT, timeout=90)


def _procfile_processes(lab: RunningLab) -> dict[str, psutil.Process]:
    """honcho's running processes by Procfile name (each is a shell or the command itself)."""
    found: dict[str, psutil.Process] = {}
    for process in psutil.Process(lab.honcho.pid).children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        for name, marker in PROCFILE_PROCESSES.items():
            if marker in command and name not in found:
                found[name] = process
    return found


def _service_processes(lab: RunningLab) -> list[psutil.Process]:
    services: list[LocalService] = [
        service for service in local_services(lab.services) if service.name != "kafka"
    ]
    services.append(lab.broker)
    processes = []
    for service in services:
        pid = running_pid(service.files)
        assert pid is not None, f"{service.name} is not running"
        leader = psutil.Process(pid)
        processes += [leader, *leader.children(recursive=True)]
    return processes


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process, address, port) of every TCP listener and unconnected UDP socket."""
    sockets = []
    for process in processes:
        try:
            connections = process.net_connections(kind="inet")
            name = f"{process.name()} ({process.pid}: {' '.join(process.cmdline())[:120]})"
        except psutil.NoSuchProcess:
            continue  # a short-lived child (a task process) that has just finished
        for conn in connections:
            listens = conn.status == psutil.CONN_LISTEN or (
                conn.type == socket.SOCK_DGRAM and not conn.raddr
            )
            if listens:
                sockets.append((name, conn.laddr.ip, conn.laddr.port))
    return sockets


def test_every_listening_socket_of_the_running_lab_is_on_loopback(lab: RunningLab) -> None:
    tree = [psutil.Process(lab.honcho.pid), *psutil.Process(lab.honcho.pid).children(True)]
    sockets = _listening(tree + _service_processes(lab))
    ports = {port for _, _, port in sockets}
    s = lab.settings
    # The listing sees what must be there, so an empty or partial listing cannot pass.
    expected = {s.api_port, s.airflow_port, s.kafka_port, s.mongo_port, s.s3_port, s.postgres_port}
    assert expected <= ports, f"missing listeners {expected - ports} in {sockets}"
    exposed = [entry for entry in sockets if not _is_loopback(entry[1])]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(map(str, exposed))


def test_no_password_reaches_the_lab_output(lab: RunningLab) -> None:
    output = lab.log.read_text(errors="replace")
    s = lab.settings
    assert "password in " in output, "Airflow's line should say where its password is"
    assert s.airflow_admin_password not in output
    assert f":{quote(s.postgres_password)}@" not in output, "a PostgreSQL URL with its password"


def _restart(lab: RunningLab, service: LocalService, outage: float) -> None:
    """Stop `service` for `outage` seconds, start it again; every Procfile process lives on."""
    before = _procfile_processes(lab)
    assert set(before) == set(PROCFILE_PROCESSES), f"running: {sorted(before)}\n{_tail(lab)}"
    service.stop()
    time.sleep(outage)
    service.start()
    # The same processes (pid and start time), not replacements.
    assert lab.honcho.poll() is None, f"honcho stopped the lab:\n{_tail(lab)}"
    after = _procfile_processes(lab)
    for name, process in before.items():
        assert name in after and after[name].pid == process.pid, f"{name} did not survive"
        assert after[name].create_time() == process.create_time()


def test_a_kafka_restart_stops_no_process_and_records_flow_again(lab: RunningLab) -> None:
    s = lab.settings
    _restart(lab, lab.broker, outage=20)

    # A restarted broker answers metadata before it leads its partitions again.
    events_mark = _first_answer(lambda: _end_offsets(s, s.topic_user_events), lab)
    orders_mark = _first_answer(lambda: _end_offsets(s, s.topic_purchased_item), lab)
    # The generator's records reach Kafka through the API again...
    _wait_for(lambda: _end_offsets(s, s.topic_user_events) > events_mark, "new events", 120, lab)
    _wait_for(lambda: _end_offsets(s, s.topic_purchased_item) > orders_mark, "new orders", 120, lab)
    # ...a DAG run stores events sent after the restart (each message is stored once, so more
    # documents than the restart's end offsets means a later one is in)...
    _wait_for(lambda: _stored_events(s) > events_mark, "a DAG run after the restart", 420, lab)
    # ...and the stream writes orders sent after the restart (exactly once, same argument).
    _wait_for(lambda: _lake_rows(s) > orders_mark, "new orders in the lake", 300, lab)
    assert set(_procfile_processes(lab)) == set(PROCFILE_PROCESSES), _tail(lab)


@pytest.mark.parametrize("name", ["postgres", "mongo", "s3"])
def test_a_restart_of_another_service_stops_no_process(lab: RunningLab, name: str) -> None:
    (service,) = [service for service in local_services(lab.services) if service.name == name]
    _restart(lab, service, outage=10)
    # Airflow keeps its state in PostgreSQL: its components come back by themselves.
    _wait_for(lambda: _airflow_healthy(lab.settings), "Airflow healthy again", 300, lab)


def test_the_terminal_shows_a_line_per_finished_task_and_none_of_airflows_own(
    lab: RunningLab,
) -> None:
    """`task up`'s terminal: Airflow's components write to their files under `.lab/logs/`,
    the runner prints one line per finished task with its summary."""
    finished = "airflow: refresh_event_counts (scheduled run) success in "
    _wait_for(lambda: finished in lab.log.read_text(), "a finished task's line", 300, lab)
    output = lab.log.read_text(errors="replace")
    assert "airflow: drain_user_events[0] (scheduled run) success in " in output, output
    airflow_lines = [line for line in output.splitlines() if "| airflow.1" in line]
    # Airflow's own log lines (structlog's "[info     ]", uvicorn's "INFO:") stay in files.
    chatter = [line for line in airflow_lines if "[info" in line or "INFO:" in line]
    assert not chatter, "\n".join(chatter[:20])
    scheduler_log = lab.settings.lab_home / "logs" / "airflow-scheduler.log"
    assert "TaskInstance Finished" in scheduler_log.read_text(errors="replace")
