"""The lab's Spark job: topic `PurchasedItem` -> raw Parquet on S3, every order exactly once.

    .venv/bin/python spark/stream_purchases.py                  # until Ctrl-C / SIGTERM
    .venv/bin/python spark/stream_purchases.py --available-now  # the backlog, then exit
    .venv/bin/python spark/stream_purchases.py --master spark://host:7077

Topic, bucket, prefixes, checkpoint, trigger interval and batch size come from the settings
(`.env` / environment). The job is `app/lake/stream.py`; its queries are in `app/lake/queries.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a file (the Procfile does), so the repository root is not on the path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.config import get_settings
from app.infra.process import InfraError
from app.lake.stream import run_stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Stream the PurchasedItem topic into raw Parquet on S3 (exactly once)."
    )
    parser.add_argument(
        "--available-now",
        action="store_true",
        help="process every order waiting in Kafka, then exit (tests, backfills, analysis)",
    )
    parser.add_argument(
        "--master", help="Spark master URL (default: SPARK_MASTER from the settings, local[*])"
    )
    args = parser.parse_args(argv)
    try:
        run_stream(get_settings(), available_now=args.available_now, master=args.master)
    except InfraError as exc:
        print(f"stream_purchases: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
