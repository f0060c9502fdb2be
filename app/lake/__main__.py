"""The lab's Spark job: topic `PurchasedItem` -> raw Parquet on S3, every order exactly once.

    .venv/bin/python -m app.lake                  # until Ctrl-C / SIGTERM
    .venv/bin/python -m app.lake --available-now  # the backlog, then exit
    .venv/bin/python -m app.lake --master spark://host:7077

It starts Spark through pyspark (which runs `spark-submit` for its JVM) rather than being given
to `spark-submit`: the session (`app/lake/session.py`) resolves and adds the connector jars and
the s3a settings itself, so one command works the same under honcho, in tests and by hand.

Topic, bucket, prefixes, checkpoint, trigger interval and batch size come from the settings
(`.env` / environment). The job is `app/lake/stream.py`; its queries are in `app/lake/queries.py`.
"""

from __future__ import annotations

import argparse
import sys

from app.core.config import get_settings
from app.core.errors import EXIT_TRY_AGAIN, LabError, ServiceAway
from app.core.logs import setup_logging
from app.core.reload import reload_argv, run_reloading


def main(argv: list[str] | None = None) -> int:
    setup_logging("spark", get_settings())
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
    parser.add_argument(
        "--reload",
        action="store_true",
        help="restart on changes to its code (the Procfile's development mode)",
    )
    args = parser.parse_args(argv)
    if args.reload:
        return run_reloading("spark", "app.lake", reload_argv(argv))
    # Imported here: the watcher of `--reload` needs neither pyspark nor code that may be
    # half-edited (it waits for the next change instead of failing with it).
    from app.lake.stream import run_stream

    try:
        run_stream(get_settings(), available_now=args.available_now, master=args.master)
    except ServiceAway as exc:
        print(f"app.lake: {exc}", file=sys.stderr)
        return EXIT_TRY_AGAIN
    except LabError as exc:
        print(f"app.lake: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
