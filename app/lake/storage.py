"""S3 access for Python code (s3fs): the same endpoint and credentials Spark's s3a uses."""

from __future__ import annotations

import s3fs

from app.core.config import Settings


def s3_filesystem(settings: Settings) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        key=settings.s3_access_key,
        secret=settings.s3_secret_key,
        endpoint_url=settings.s3_endpoint_url,
        client_kwargs={"region_name": settings.s3_region},
        config_kwargs={"s3": {"addressing_style": "path"}},
        use_listings_cache=False,
    )


def ensure_bucket(settings: Settings) -> str:
    fs = s3_filesystem(settings)
    if fs.exists(settings.s3_bucket):
        return f"bucket {settings.s3_bucket}: exists"
    # A plain CreateBucket: s3fs's mkdir sends a LocationConstraint that us-east-1 refuses.
    fs.call_s3("create_bucket", Bucket=settings.s3_bucket)
    return f"bucket {settings.s3_bucket}: created"
