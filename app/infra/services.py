"""The four services of the lab, run as local processes (no Docker).

Each service knows how to install itself (cached under the lab home), prepare its storage once,
start, answer a health check and stop. `app.infra.cli` drives them.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from app.core.config import Settings
from app.infra.process import (
    InfraError,
    ProcessFiles,
    port_open,
    private_dir,
    run,
    running_pid,
    start_process,
    stop_process,
    wait_until,
)

HOST = "127.0.0.1"

# Every connection, socket or TCP, proves the password (SCRAM); nothing is trusted.
PG_HBA = """\
# Written by the lab on every start (app/infra/services.py); edits here are replaced.
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


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


def _which(name: str) -> str | None:
    return shutil.which(name)


def _tool(name: str, hint: str) -> str:
    path = _which(name)
    if path is None:
        raise InfraError(f"`{name}` is not installed. {hint}")
    return path


# --------------------------------------------------------------------------- PostgreSQL


class Postgres(LocalService):
    """PostgreSQL from the distribution's packages, in a cluster of the lab's own."""

    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client to leave.
    stop_signal = signal.SIGINT

    @property
    def port(self) -> int:
        return self.settings.postgres_port

    def describe(self) -> str:
        return f"PostgreSQL {self._bindir().parent.name} (local)"

    def _bindir(self) -> Path:
        versions = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/postgres"),
            key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        )
        if versions:
            return versions[-1].parent
        found = _which("postgres")
        if found:
            return Path(found).resolve().parent
        raise InfraError("PostgreSQL server binaries not found.")

    @property
    def _os_user(self) -> str | None:
        # PostgreSQL refuses to run as root; as root we run it as the `postgres` system user.
        return "postgres" if os.geteuid() == 0 else None

    @property
    def socket_dir(self) -> Path:
        return self.home / "run" / "postgres-socket"

    def install(self) -> None:
        try:
            self._bindir()
        except InfraError:
            if os.geteuid() != 0 or not _which("apt-get"):
                raise InfraError(
                    "PostgreSQL is not installed. Install it (Debian/Ubuntu: "
                    "`sudo apt-get install -y postgresql`) and run `task infra-up` again."
                ) from None
            run(["apt-get", "update", "-q"], what="apt-get update", timeout=600)
            run(
                ["apt-get", "install", "-y", "-q", "postgresql"],
                what="installing PostgreSQL",
                env={"DEBIAN_FRONTEND": "noninteractive"},
                timeout=1200,
            )

    def _own(self, path: Path) -> None:
        if self._os_user:
            shutil.chown(path, self._os_user, self._os_user)

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if not self._os_user:
            return argv
        user = self._os_user
        return ["setpriv", "--reuid", user, "--regid", user, "--init-groups", *argv]

    def prepare(self) -> None:
        # Only the server's user may enter the socket folder: no other local account reaches
        # the server through it, and over TCP every account needs the password.
        private_dir(self.socket_dir)
        self._own(self.socket_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        # Written on every start, so a cluster made by an older lab (trust) is tightened too.
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(PG_HBA)
        hba.chmod(0o600)
        self._own(hba)

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data_dir)
        # initdb reads the superuser's password from a file: one only the server's user can read.
        with tempfile.TemporaryDirectory(prefix="initdb-", dir=self.home / "run") as folder:
            self._own(Path(folder))
            pwfile = Path(folder) / "password"
            descriptor = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(self.settings.postgres_password + "\n")
            self._own(pwfile)
            run(
                self._as_server_user(
                    [
                        str(self._bindir() / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        self.settings.postgres_user,
                        f"--pwfile={pwfile}",
                        "--auth=scram-sha-256",
                        "--encoding=UTF8",
                        "--locale=C",
                    ]
                ),
                what="initdb",
                log=self.files.log,
                timeout=300,
            )

    def launch(self) -> Launch:
        return Launch(
            argv=[
                str(self._bindir() / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                f"unix_socket_directories={self.socket_dir}",
                "-c",
                "max_connections=100",
                "-c",
                "shared_buffers=128MB",
            ],
            user=self._os_user,
            cwd=self.data_dir,
        )

    def ready(self) -> bool:
        import psycopg2

        conn = psycopg2.connect(self.settings.postgres_dsn("postgres"), connect_timeout=2)
        conn.close()
        return True


def local_services(settings: Settings) -> list[LocalService]:
    from app.infra.kafka import Kafka
    from app.infra.mongo import Mongo
    from app.infra.s3 import ObjectStore

    return [Postgres(settings), Kafka(settings), Mongo(settings), ObjectStore(settings)]
