"""MongoDB as a local process: `mongod` when one is on PATH, else FerretDB 1.x (Apache-2.0).

FerretDB speaks the MongoDB wire protocol and keeps its data in SQLite files under the lab home.
It is built from the Go module proxy by infra/ferretdb/build.sh: a small wrapper (main.go) plus
build-time patches of upstream (see the script): six shortcomings that the lab would hit, and
three costs of the update path (together, half of FerretDB's CPU per counts update).

SQLite runs in WAL mode with `synchronous=NORMAL`: a commit is safe from a crash of FerretDB or of
any lab process, and only an operating-system crash or power loss can take back the last commits,
as with mongod's default journal (flushed every 100 ms) and the single Kafka broker (page cache).
Measured on the lab's counts pattern: an update costs about half of what it costs with `FULL`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from app.core.config import ROOT
from app.core.process import run
from app.infra.binaries import GO_HINT, is_up_to_date
from app.infra.local_service import HOST, Launch, LocalService, tool

FERRETDB_DIR = ROOT / "infra" / "ferretdb"


class Mongo(LocalService):
    name = "mongo"
    start_timeout = 60.0

    @property
    def port(self) -> int:
        return self.settings.mongo_port

    @property
    def mongod(self) -> str | None:
        return shutil.which("mongod")

    def describe(self) -> str:
        return "mongod (PATH)" if self.mongod else "FerretDB 1.24.2 (patched, SQLite)"

    @property
    def ferretdb_binary(self) -> Path:
        return self.home / "bin" / "ferretdb-1.24.2-patched"

    @property
    def sqlite_url(self) -> str:
        return f"file:{self.data_dir}/?_pragma=synchronous(normal)"

    def install(self) -> None:
        if self.mongod or is_up_to_date(self.ferretdb_binary, FERRETDB_DIR):
            return
        tool("go", GO_HINT)
        run(
            ["bash", str(FERRETDB_DIR / "build.sh"), str(self.ferretdb_binary)],
            what="building FerretDB with Go (first time: a few minutes)",
            env={"FERRETDB_SRC_DIR": str(self.home / "build" / "ferretdb")},
            log=self.files.log,
            timeout=2400,
        )

    def launch(self) -> Launch:
        if self.mongod:
            argv = [self.mongod, "--bind_ip", HOST, "--port", str(self.port)]
            argv += ["--dbpath", str(self.data_dir), "--quiet"]
            return Launch(argv=argv)
        return Launch(
            argv=[
                str(self.ferretdb_binary),
                f"-listen-addr={HOST}:{self.port}",
                "-handler=sqlite",
                f"-sqlite-url={self.sqlite_url}",
                "-log-level=warn",
            ],
        )

    def ready(self) -> bool:
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(
            HOST, self.port, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000
        )
        try:
            client.admin.command("ping")
        finally:
            client.close()
        return True
