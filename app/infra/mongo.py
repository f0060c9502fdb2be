"""MongoDB as a local process: `mongod` when one is on PATH, else FerretDB 1.x (Apache-2.0).

FerretDB speaks the MongoDB wire protocol and keeps its data in SQLite files under the lab home.
It is built from the Go module proxy by a small wrapper in infra/ferretdb (see its main.go).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from app.core.config import ROOT
from app.infra.binaries import go_build
from app.infra.services import HOST, Launch, LocalService

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
        return "mongod (PATH)" if self.mongod else "FerretDB 1.24 (SQLite backend)"

    @property
    def ferretdb_binary(self) -> Path:
        return self.home / "bin" / "ferretdb"

    def install(self) -> None:
        if not self.mongod:
            go_build(FERRETDB_DIR, self.ferretdb_binary, ".", what="FerretDB", log=self.files.log)

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def launch(self) -> Launch:
        if self.mongod:
            argv = [self.mongod, "--bind_ip", HOST, "--port", str(self.port)]
            argv += ["--dbpath", str(self.data_dir), "--quiet"]
            return Launch(argv=argv, marker=str(self.data_dir))
        return Launch(
            argv=[
                str(self.ferretdb_binary),
                f"-listen-addr={HOST}:{self.port}",
                "-handler=sqlite",
                f"-sqlite-url={self.data_dir}",
                "-log-level=warn",
            ],
            marker=str(self.data_dir),
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
