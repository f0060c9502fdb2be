"""PostgreSQL from the distribution's packages, in a cluster of the lab's own (local mode)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from app.core.process import InfraError, private_dir, run
from app.infra.local_service import HOST, Launch, LocalService

# Every connection, socket or TCP, proves the password (SCRAM); nothing is trusted.
PG_HBA = """\
# Written by the lab on every start (app/infra/postgres.py); edits here are replaced.
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


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
        found = shutil.which("postgres")
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
            if os.geteuid() != 0 or not shutil.which("apt-get"):
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
