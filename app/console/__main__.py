"""`python -m app.console`: serve the live console on the configured host and port."""

from __future__ import annotations

import uvicorn

from app.console.main import create_app
from app.core.config import get_settings


def main() -> None:
    settings = get_settings()
    print(f"console: {settings.console_url}/ (the whole pipeline, live)", flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.console_host,
        port=settings.console_port,
        # The page's event stream is one long request; per-request lines would say nothing.
        access_log=False,
    )


if __name__ == "__main__":
    main()
