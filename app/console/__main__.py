"""`python -m app.console`: serve the live console on the configured host and port.

`--url` only prints the address (the lab's start prints it first, before the processes' logs).
"""

from __future__ import annotations

import argparse

import uvicorn

from app.core.config import get_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.console", description=__doc__)
    parser.add_argument("--url", action="store_true", help="print the console's address and exit")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.url:
        print(f"console: {settings.console_url}/ (the whole pipeline, live, once the lab runs)")
        return
    print(f"console: {settings.console_url}/ (the whole pipeline, live)", flush=True)
    # Imported here: the app pulls in pyarrow and the clients, which `--url` does not need.
    from app.console.main import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.console_host,
        port=settings.console_port,
        # The page's event stream is one long request; per-request lines would say nothing.
        access_log=False,
        # An open page holds an endless event stream: without a limit a stop would wait for
        # every browser tab to close.
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
