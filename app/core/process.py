"""Start, watch and stop the lab's local background processes.

Each process gets a log file under `<lab_home>/logs/` and a pid file under `<lab_home>/run/`.
Only processes whose pid file the lab wrote are ever stopped, and a pid is trusted only while the
process holding it started at the time the file records (psutil, so Linux and macOS alike): a
recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed

from app.core.errors import LabError

# create_time() is rounded differently by platforms; a reused pid starts seconds apart at least.
START_TIME_TOLERANCE = 0.05


class InfraError(LabError):
    """A problem a person has to act on; the message says what happened and what to do."""


@dataclass(frozen=True)
class ProcessFiles:
    name: str
    lab_home: Path

    @property
    def log(self) -> Path:
        return self.lab_home / "logs" / f"{self.name}.log"

    @property
    def pid(self) -> Path:
        return self.lab_home / "run" / f"{self.name}.pid"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it readable by its owner only (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def running_pid(files: ProcessFiles) -> int | None:
    """The pid of the lab's process if it is alive and still the one the lab started."""
    try:
        pid_text, _, recorded = files.pid.read_text().partition("\n")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    try:
        process = psutil.Process(pid)
        try:
            started = float(recorded)
        except ValueError:
            # A pid file of an older lab: the pid and a word of the command line it started.
            if not recorded.strip() or recorded.strip() not in " ".join(process.cmdline()):
                return None
        else:
            # The same pid with another start time is another process that reused the number.
            if abs(process.create_time() - started) > START_TIME_TOLERANCE:
                return None
        # A zombie (exited, not yet reaped) counts as gone.
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return pid


def start_process(
    files: ProcessFiles,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` detached (own session), output appended to the log, pid recorded."""
    files.log.parent.mkdir(parents=True, exist_ok=True)
    files.pid.parent.mkdir(parents=True, exist_ok=True)
    with files.log.open("ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n=== {stamp} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            user=user,
            group=user,
        )
    started = _start_time(proc.pid)
    # A process that is already gone gets no pid file; the caller sees its exit.
    if started is not None:
        files.pid.write_text(f"{proc.pid}\n{started!r}\n")
    return proc


def stop_process(
    files: ProcessFiles, timeout: float = 30.0, stop_signal: int = signal.SIGTERM
) -> bool:
    """Signal the lab's process, SIGKILL its group after `timeout`. True if one was running."""
    pid = running_pid(files)
    if pid is None:
        files.pid.unlink(missing_ok=True)
        return False
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).send_signal(stop_signal)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid(files) is not None:
        time.sleep(0.2)
    if running_pid(files) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.5)
    files.pid.unlink(missing_ok=True)
    return True


def kill_tree(pid: int, *, include_root: bool = True, timeout: float = 1.0) -> None:
    """SIGKILL every process under `pid` (and `pid` itself unless `include_root` is false),
    then wait up to `timeout` for them to be gone."""
    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), *([root] if include_root else [])]
    except psutil.Error:
        return
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(tree, timeout=timeout)


def when_parent_exits(action: Callable[[], None]) -> bool:
    """Call `action` (on a thread of its own) once this process's multiprocessing parent is
    gone, even killed with no time to stop its children; False if there is no such parent."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return False

    def watch() -> None:
        wait([parent.sentinel])
        action()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    return True


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log yet)"
    return "\n".join(content[-lines:])


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    files: ProcessFiles | None = None,
    process: subprocess.Popen[bytes] | None = None,
    interval: float = 0.5,
) -> float:
    """Poll `check` until it is true; raise InfraError naming the log on timeout or early exit.

    With `process` (just started by us), its exit is detected through the child handle, which
    has no race with exec; otherwise through the pid file of `files`.
    """
    started = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - started
        if process is not None:
            exited = process.poll() is not None
        else:
            exited = files is not None and running_pid(files) is None
        if files is not None and exited:
            raise InfraError(
                f"{what} exited while starting. Last lines of {files.log}:\n{log_tail(files.log)}"
            )
        if time.monotonic() - started > timeout:
            where = f" See its log: {files.log}\n{log_tail(files.log)}" if files else ""
            raise InfraError(f"{what} did not become ready within {timeout:.0f} s.{where}")
        time.sleep(interval)


def run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 1800,
    log: Path | None = None,
) -> str:
    """Run a setup command to completion; on failure raise InfraError with its output."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise InfraError(f"{what}: {argv[0]} is not installed ({exc}).") from exc
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"{what} took longer than {timeout:.0f} s: {' '.join(argv)}") from exc
    output = result.stdout + result.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:
            handle.write(f"\n=== {what}: {' '.join(argv)}\n{output}")
    if result.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-20:])
        raise InfraError(f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{tail}")
    return result.stdout
