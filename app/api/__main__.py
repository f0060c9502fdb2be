"""`python -m app.api`: serve the ingest API with uvicorn on the configured host and port.

Reloads on code changes under `app/` (the Procfile's development mode); `--no-reload` serves
one plain worker, as the benchmark does.
"""

from __future__ import annotations

import argparse

import uvicorn

from app.core.config import ROOT, get_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.api", description=__doc__)
    parser.add_argument(
        "--no-reload", action="store_true", help="do not watch app/ for code changes"
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    uvicorn.run(
        "app.api.main:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        reload=not args.no_reload,
        reload_dirs=[str(ROOT / "app")],
        # One line per request would drown the lab's other logs; /metrics counts requests.
        access_log=False,
    )


if __name__ == "__main__":
    main()
