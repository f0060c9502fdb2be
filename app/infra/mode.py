"""Which way the lab runs its services: Docker Compose when an engine answers, else local processes.

`LAB_INFRA_MODE=docker|local` forces one; `task infra-up` records the mode it used, so `down`
and `status` talk to the same services.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from app.core.config import Settings


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=8,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def mode_file(settings: Settings) -> Path:
    return settings.lab_home / "run" / "infra-mode"


def resolve_mode(settings: Settings) -> str:
    """The mode in use: the one recorded by `up`, else the configured one, else auto-detected."""
    if settings.lab_infra_mode != "auto":
        return settings.lab_infra_mode
    recorded = mode_file(settings)
    if recorded.exists():
        return recorded.read_text().strip()
    return "docker" if docker_engine_answers() else "local"
