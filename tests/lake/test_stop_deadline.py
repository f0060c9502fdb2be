"""The stream's stop deadline (SPARK_STOP_SECONDS) without a JVM: once it fires, the process exits
0 even when the main thread fails at the same moment (its calls into the killed JVM do)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# The deadline's first step (its message) is made slow, and the main thread raises as soon as it
# begins: the main thread must wait for the deadline's exit instead of exiting first with 1.
RACE = textwrap.dedent(
    """
    import os, signal, threading, time
    from app.lake.stream import _stop_requests

    fired = threading.Event()

    def slow_log(message):
        print(message, flush=True)
        fired.set()
        time.sleep(0.5)

    with _stop_requests(0.01, slow_log) as received:
        os.kill(os.getpid(), signal.SIGTERM)
        fired.wait(10)
        raise RuntimeError("a call into the killed JVM failed")
    """
)

# A stop that finishes before its deadline is not cut short, and nothing fires later.
IN_TIME = textwrap.dedent(
    """
    import os, signal, time
    from app.lake.stream import _stop_requests

    with _stop_requests(0.3, print) as received:
        os.kill(os.getpid(), signal.SIGTERM)
        while not received:
            time.sleep(0.01)
    time.sleep(0.6)
    print("stopped in time", flush=True)
    """
)


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )


def test_a_deadline_that_fires_exits_0_even_when_the_main_thread_fails() -> None:
    result = _run(RACE)
    assert result.returncode == 0, result.stderr
    assert "the stop took more than 0.01 s: killed the JVM" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_stop_within_the_deadline_is_not_cut_short() -> None:
    result = _run(IN_TIME)
    assert result.returncode == 0, result.stderr
    assert "stopped in time" in result.stdout
    assert "killed the JVM" not in result.stdout
