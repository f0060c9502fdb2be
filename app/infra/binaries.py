"""Go programs the local mode builds from the Go module proxy, cached under the lab home."""

from __future__ import annotations

from pathlib import Path

from app.core.process import run
from app.infra.local_service import tool

GO_HINT = "Install Go 1.25+ (e.g. `sudo apt-get install -y golang`), or put the server on PATH."


def is_up_to_date(output: Path, source_dir: Path) -> bool:
    """True when `output` exists and is newer than every build input in `source_dir`."""
    inputs = [p for p in source_dir.iterdir() if p.suffix in {".go", ".mod", ".sum", ".sh", ".in"}]
    return output.exists() and all(output.stat().st_mtime >= p.stat().st_mtime for p in inputs)


def go_build(source_dir: Path, output: Path, package: str, *, what: str, log: Path) -> Path:
    """`go build` `package` from the module in `source_dir` unless `output` is up to date."""
    if is_up_to_date(output, source_dir):
        return output
    go = tool("go", GO_HINT)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    run(
        [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(partial), package],
        what=f"building {what} with Go (first time: a few minutes)",
        cwd=source_dir,
        env={"CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"},
        log=log,
        timeout=2400,
    )
    partial.rename(output)
    return output
