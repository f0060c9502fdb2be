"""One logging setup for every entry point of the lab (`setup_logging`, called first in each
`main`), so its lines read alike in `task up`'s terminal and in a log file.

Lines go to stderr as `<process>: <message>` (honcho adds the time and the Procfile name),
warnings and errors with their level. Libraries that chatter at INFO (Kafka clients, py4j,
httpx) say only warnings; a setting of `LAB_LOG_LEVEL=DEBUG` shows everything.
"""

from __future__ import annotations

import logging
import sys

from app.core.config import Settings

QUIET_LIBRARIES = (
    "kafka",
    "py4j",
    "httpx",
    "httpcore",
    "urllib3",
    "botocore",
    "s3fs",
    "pymongo",
    # "N changes detected" before live reload decides whether a change is for this process.
    "watchfiles",
)


class _Format(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        text = f"{self.process}: {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(process: str, settings: Settings) -> None:
    """Send the lab's log lines to stderr as `<process>: <message>`; quiet chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.lab_log_level)
    if settings.lab_log_level != "DEBUG":
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
