"""Headless Chromium for the console's browser test: found on PATH, installed when missing.

Debian's `chromium` and `chromium-driver` packages, as the lab's install step installs
PostgreSQL: with apt-get when running as root, otherwise a message saying what to run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from app.core.process import InfraError, run

PACKAGES = ("chromium", "chromium-driver")
INSTALL_HINT = "`sudo apt-get install -y chromium chromium-driver`"


@dataclass(frozen=True)
class Chromium:
    browser: Path
    driver: Path


def find_chromium() -> Chromium | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return Chromium(Path(browser), Path(driver)) if browser and driver else None


def ensure_chromium() -> Chromium:
    """Chromium and its driver, installed with apt-get when missing (as root on Debian)."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise InfraError(
            f"Chromium and chromedriver are not installed (the console's browser test drives "
            f"them). Install them (Debian/Ubuntu: {INSTALL_HINT}) and run the test again."
        )
    run(["apt-get", "update", "-q"], what="apt-get update", timeout=600)
    run(
        ["apt-get", "install", "-y", "-q", *PACKAGES],
        what="installing Chromium",
        env={"DEBIAN_FRONTEND": "noninteractive"},
        timeout=1200,
    )
    found = find_chromium()
    if found is None:
        raise InfraError(f"apt-get installed {', '.join(PACKAGES)} but they are not on PATH.")
    return found
