"""What every local service of the lab is: install, prepare once, start, health check, stop.

The four services (`postgres.py`, `kafka.py`, `mongo.py`, `s3.py`) subclass `LocalService`;
`services.local_services` lists them and `app.infra.lifecycle` drives them.
"""

from __future__ import annotations

import shutil
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from app.core.config import Settings
from app.core.process import (
    InfraError,
    ProcessFiles,
    port_open,
    private_dir,
    running_pid,
    start_process,
    stop_process,
    wait_until,
)

HOST = "127.0.0.1"


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    cwd: Path | None = None


class LocalService(ABC):
    name: str
    start_timeout: float = 90.0
    stop_signal: int = signal.SIGTERM

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.lab_home
        self.files = ProcessFiles(self.name, self.home)
        self.data_dir = self.home / "data" / self.name

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @abstractmethod
    def describe(self) -> str:
        """Which implementation runs this service, e.g. `FerretDB 1.24 (SQLite)`."""

    def install(self) -> None:
        """Fetch or build what the service needs; cached, so cheap when already done."""

    def prepare(self) -> None:
        """One-time storage initialisation; must be idempotent."""

    @abstractmethod
    def launch(self) -> Launch: ...

    @abstractmethod
    def ready(self) -> bool:
        """True when the service answers its protocol, not just its port."""

    def pid(self) -> int | None:
        return running_pid(self.files)

    def start(self) -> str:
        if self.pid() is not None:
            wait_until(self.ready, what=self.name, timeout=self.start_timeout, files=self.files)
            return "already running"
        for port in self.ports:
            if port_open(HOST, port):
                raise InfraError(
                    f"Port {port} on {HOST} is already taken, so {self.name} cannot start. "
                    f"Stop whatever listens there (`ss -ltnp 'sport = :{port}'` shows it) or set "
                    f"another port in .env."
                )
        self.install()
        # The data is the service's alone: other local accounts cannot read around its auth.
        private_dir(self.data_dir)
        self.prepare()
        spec = self.launch()
        process = start_process(
            self.files,
            spec.argv,
            env=spec.env,
            user=spec.user,
            cwd=spec.cwd,
        )
        took = wait_until(
            self.ready,
            what=self.name,
            timeout=self.start_timeout,
            files=self.files,
            process=process,
        )
        return f"started in {took:.1f} s"

    def stop(self) -> bool:
        return stop_process(self.files, stop_signal=self.stop_signal)


def tool(name: str, hint: str) -> str:
    """The path of a command on PATH, or InfraError saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise InfraError(f"`{name}` is not installed. {hint}")
    return path
