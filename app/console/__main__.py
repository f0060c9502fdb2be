"""`python -m app.console`: serve the live console on the configured host and port.

`--url` only prints the address (the lab's start prints it first, before the processes' logs).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

import uvicorn

from app.core.config import get_settings
from app.core.logs import setup_logging
from app.core.reload import reload_argv, run_reloading


def _stopped(_signum: int, _frame: FrameType | None) -> None:
    # At once: a probe thread may still wait on a service's time-out, and it holds nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    setup_logging("console", get_settings())
    parser = argparse.ArgumentParser(prog="python -m app.console", description=__doc__)
    parser.add_argument("--url", action="store_true", help="print the console's address and exit")
    parser.add_argument(
        "--reload",
        action="store_true",
        help="restart on changes to its code (the Procfile's development mode)",
    )
    args = parser.parse_args(argv)
    if args.reload:
        sys.exit(run_reloading("console", "app.console", reload_argv(argv)))
    settings = get_settings()
    if args.url:
        print(f"console: {settings.console_url}/ (the whole pipeline, live, once the lab runs)")
        return
    print(f"console: {settings.console_url}/ (the whole pipeline, live)", flush=True)
    # Imported here: the app pulls in pyarrow and the clients, which `--url` does not need.
    from app.console.main import create_app

    # uvicorn stops gracefully on SIGTERM, then raises the signal again for the handler it
    # found: with this one the process then ends with status 0 (`console.1 stopped (rc=0)`).
    signal.signal(signal.SIGTERM, _stopped)
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
