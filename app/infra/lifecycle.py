"""`task install`, `task infra-up` and `task infra-down`: fetch, start and stop the four services.

`up` waits for every service, then bootstraps topics, bucket, indexes and tables. It is
idempotent: services already up are left alone. One `up` or `down` runs at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator

from app.core.config import Settings
from app.core.process import InfraError
from app.infra.compose import COMPOSE_KAFKA_PROFILES, compose
from app.infra.kafka import kafka_of_another_size, other_kafka_nodes
from app.infra.mode import mode_file, resolve_mode
from app.infra.services import local_services


@contextlib.contextmanager
def infra_lock(settings: Settings) -> Iterator[None]:
    """One `up`/`down` at a time, even from parallel test runs or terminals."""
    path = settings.lab_home / "run" / "infra.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def up(settings: Settings) -> None:
    with infra_lock(settings):
        _up(settings)


def _up(settings: Settings) -> None:
    mode = resolve_mode(settings)
    started = time.monotonic()
    print(f"infra-up: {mode} mode (data and logs under {settings.lab_home})")
    if mode == "docker":
        compose(settings, "up", "-d", "--wait")
    else:
        _refuse_another_kafka_size(settings)
        for service in local_services(settings):
            print(f"  {service.name:<9} {service.describe():<40} ...", end="", flush=True)
            outcome = service.start()
            print(f" {outcome}")
    mode_file(settings).parent.mkdir(parents=True, exist_ok=True)
    mode_file(settings).write_text(mode)

    from app.infra.bootstrap import bootstrap

    for line in bootstrap(settings):
        print(f"  bootstrap: {line}")
    print(f"infra-up: all four services ready in {time.monotonic() - started:.1f} s")


def _refuse_another_kafka_size(settings: Settings) -> None:
    running = kafka_of_another_size(settings)
    if running:
        raise InfraError(
            f"Kafka of another cluster size is running ({', '.join(running)}), not the "
            f"KAFKA_BROKERS={settings.kafka_brokers} one asked for. Stop it first with "
            f"`task infra-down` (it stops every size), then run `task infra-up` again."
        )


def install(settings: Settings) -> None:
    """Fetch and build what the lab runs (no-op for what is cached): the local services' jars
    and binaries in local mode, and Spark's connector jars in both modes."""
    if resolve_mode(settings) == "local":
        for service in local_services(settings):
            started = time.monotonic()
            service.install()
            took = time.monotonic() - started
            print(f"  {service.name:<9} {service.describe():<40} {took:.1f} s")
    from app.lake.jars import ensure_jars

    started = time.monotonic()
    ensure_jars(settings)
    took = time.monotonic() - started
    print(f"  {'spark':<9} {'connector jars (Kafka source, s3a)':<40} {took:.1f} s")
    from app.infra.browser import ensure_chromium

    started = time.monotonic()
    try:
        browser = str(ensure_chromium().browser)
    except InfraError as exc:  # only the console's browser test drives it
        print(f"  {'chromium':<9} not installed: {exc}")
    else:
        took = time.monotonic() - started
        print(f"  {'chromium':<9} {browser:<40} {took:.1f} s")


def down(settings: Settings) -> None:
    with infra_lock(settings):
        _down(settings)


def _down(settings: Settings) -> None:
    mode = resolve_mode(settings)
    if mode == "docker":
        # Every profile: a cluster of the size used before stops too.
        profiles = [arg for name in COMPOSE_KAFKA_PROFILES.values() for arg in ("--profile", name)]
        compose(settings, *profiles, "down")
        print("infra-down: compose services stopped (volumes kept)")
    else:
        for service in reversed(local_services(settings)):
            stopped = service.stop()
            print(f"  {service.name:<9} {'stopped' if stopped else 'was not running'}")
        for node in other_kafka_nodes(settings):  # a cluster of the size used before
            if node.stop():
                print(f"  {node.name:<9} stopped (KAFKA_BROKERS is now {settings.kafka_brokers})")
    mode_file(settings).unlink(missing_ok=True)
