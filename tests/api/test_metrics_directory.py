"""The API's multi-process metrics folder: a fresh one per start, even when a killed API left a
folder under the same pid (pids are reused), and none left by APIs no longer running."""

from __future__ import annotations

import os
from pathlib import Path

from app.api.server import _metrics_directory
from app.core.config import Settings


def test_a_leftover_folder_with_our_pid_is_replaced_and_dead_ones_removed(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, lab_home=tmp_path)  # type: ignore[call-arg]
    root = tmp_path / "run" / "api-metrics"
    ours = root / str(os.getpid())
    ours.mkdir(parents=True)
    (ours / "counter_123.db").write_bytes(b"a killed API's counters")
    dead = root / "999999999"
    dead.mkdir()

    directory = _metrics_directory(settings)

    assert directory == ours
    assert list(directory.iterdir()) == []
    assert not dead.exists()
