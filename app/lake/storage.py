"""S3 access for Python code (s3fs): the same endpoint and credentials Spark's s3a uses.

Lake locations are URLs as Spark writes them (`s3a://bucket/key`) or local paths (the checkpoint
may be on local disk); `location` turns either into an fsspec filesystem and a path on it.
"""

from __future__ import annotations

import s3fs
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from app.core.config import Settings

S3_SCHEMES = ("s3a://", "s3://")


def s3_filesystem(settings: Settings, *, timeout: float | None = None) -> s3fs.S3FileSystem:
    """An s3fs client; `timeout` (seconds) bounds each request and turns off retries, for the
    calls that must give up quickly while S3 is away (the writer lease)."""
    config: dict[str, object] = {"s3": {"addressing_style": "path"}}
    if timeout is not None:
        config |= {
            "connect_timeout": timeout,
            "read_timeout": timeout,
            "retries": {"max_attempts": 1, "mode": "standard"},
        }
    return s3fs.S3FileSystem(
        key=settings.s3_access_key,
        secret=settings.s3_secret_key,
        endpoint_url=settings.s3_endpoint_url,
        client_kwargs={"region_name": settings.s3_region},
        config_kwargs=config,
        use_listings_cache=False,
    )


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
