"""`python -m app.api`: serve the ingest API with uvicorn on the configured host and port.

Reloads on code changes under `app/` (the Procfile's development mode, one server process);
`--no-reload` or `API_RELOAD=false` serves `API_WORKERS` processes (default one per core), as
the benchmark and the tests do.
"""

from __future__ import annotations

import argparse

from app.api.server import serve
from app.core.config import get_settings
from app.core.logs import setup_logging


def main(argv: list[str] | None = None) -> None:
    setup_logging("api", get_settings())
    parser = argparse.ArgumentParser(prog="python -m app.api", description=__doc__)
    parser.add_argument(
        "--no-reload", action="store_true", help="do not watch app/ for code changes"
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    serve(settings, reload=settings.api_reload and not args.no_reload)


if __name__ == "__main__":
    main()
