"""S3 as a local process: `minio` when one is on PATH, else the Versity S3 Gateway.

versitygw (Apache-2.0) serves S3 over a plain directory (its posix backend: one file per object,
metadata in xattrs). It is built from the Go module proxy at the version pinned in
infra/s3/go.mod. It does multipart uploads, ListObjectsV2, copy and batch delete, which is what
Spark's s3a and s3fs need; see infra/s3/README.md for why it was chosen.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from app.core.config import ROOT
from app.infra.binaries import go_build
from app.infra.local_service import HOST, Launch, LocalService

S3_DIR = ROOT / "infra" / "s3"
# MinIO's liveness path; versitygw is told to serve the same one, so one probe fits both.
HEALTH_PATH = "/minio/health/live"


class ObjectStore(LocalService):
    name = "s3"
    start_timeout = 60.0

    @property
    def port(self) -> int:
        return self.settings.s3_port

    @property
    def minio(self) -> str | None:
        return shutil.which("minio")

    def describe(self) -> str:
        return "minio (PATH)" if self.minio else "Versity S3 Gateway (posix)"

    @property
    def versitygw_binary(self) -> Path:
        return self.home / "bin" / "versitygw"

    def install(self) -> None:
        if not self.minio:
            go_build(
                S3_DIR,
                self.versitygw_binary,
                "github.com/versity/versitygw/cmd/versitygw",
                what="the Versity S3 Gateway",
                log=self.files.log,
            )

    def launch(self) -> Launch:
        s = self.settings
        if self.minio:
            return Launch(
                argv=[self.minio, "server", str(self.data_dir), "--address", f"{HOST}:{self.port}"],
                env={
                    "MINIO_ROOT_USER": s.s3_access_key,
                    "MINIO_ROOT_PASSWORD": s.s3_secret_key,
                    # The web console would listen on every interface; the lab does without it.
                    "MINIO_BROWSER": "off",
                },
            )
        return Launch(
            argv=[
                str(self.versitygw_binary),
                "--port",
                f"{HOST}:{self.port}",
                "--region",
                s.s3_region,
                "--health",
                HEALTH_PATH,
                "--quiet",
                "posix",
                str(self.data_dir),
            ],
            # Credentials through the environment keep them out of `ps` output.
            env={"ROOT_ACCESS_KEY": s.s3_access_key, "ROOT_SECRET_KEY": s.s3_secret_key},
        )

    def ready(self) -> bool:
        url = f"http://{HOST}:{self.port}{HEALTH_PATH}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
