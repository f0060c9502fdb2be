"""S3 access for Python code (s3fs): the same endpoint and credentials Spark's s3a uses.

Lake locations are URLs as Spark writes them (`s3a://bucket/key`) or local paths (the checkpoint
may be on local disk); `location` turns either into an fsspec filesystem and a path on it.
"""

from __future__ import annotations

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from app.core.clients import s3_filesystem
from app.core.config import Settings

S3_SCHEMES = ("s3a://", "s3://")


def ensure_bucket(settings: Settings) -> str:
    fs = s3_filesystem(settings)
    if fs.exists(settings.s3_bucket):
        return f"bucket {settings.s3_bucket}: exists"
    # A plain CreateBucket: s3fs's mkdir sends a LocationConstraint that us-east-1 refuses.
    fs.call_s3("create_bucket", Bucket=settings.s3_bucket)
    return f"bucket {settings.s3_bucket}: created"


def join_url(base: str, *parts: str) -> str:
    """`base/part/...` for an `s3a://` URL or a local path alike (pathlib would turn `s3a://b`
    into `s3a:/b`)."""
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def is_s3(url: str) -> bool:
    return url.startswith(S3_SCHEMES)


def location(settings: Settings, url: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem holding `url` and the path of `url` on it (`bucket/key` on S3)."""
    if is_s3(url):
        return s3_filesystem(settings), url.split("://", 1)[1].rstrip("/")
    return LocalFileSystem(), url.removeprefix("file://").rstrip("/")
