"""Benchmark: how many events per second the generator sends through the API.

Starts the API as the lab does (`python -m app.api --no-reload`, `API_WORKERS` server processes)
on a free port with topics of its own, then in one run:

1. baseline: the bench's own raw-HTTP load client (`bench_api.run_load`, closed loop on 64
   connections) sending `PUT /SendEvent`: what the API takes on this machine right now;
2. `python -m app.generator --processes N` offering more users per second than the target needs,
   for `--seconds`: the events per second Kafka acknowledged (the API's `/metrics`, after a
   warm-up), and the generator's CPU per event (all its processes);
3. the same generator as it was at `--baseline-ref` (by default the last commit with the aiohttp
   client; its `app/` extracted with `git archive`), same options, same API: its rate and CPU
   per event, the figure the current one is compared with.

The generator shares the machine with the API and the broker, so its rate is bounded by theirs
(hence the baseline); its CPU per event says what one core of generator sends on its own.

    .venv/bin/python bench/bench_generator.py [--seconds 15] [--processes 2] [--baseline-ref REF]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import httpx
import psutil
from confluent_kafka.admin import AdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_api import (
    build_records,
    free_port,
    http_request,
    load_average,
    run_load,
    start_api,
    tree_cpu,
)

from app.core.config import ROOT, Settings, get_settings
from app.core.topics import ensure_topics

TARGET_EVENTS_PER_SECOND = 5_000
# Sessions make ~3.9 events each: 1,600 users/s offer ~6,200 events/s, above the target.
USERS_PER_SECOND = 1_600
WARM_UP_SECONDS = 3.0
# The generator before its own HTTP client (aiohttp, ~240 µs of CPU per event).
BASELINE_REF = "69a9b7c109ce08cf4772c6a113b357005839c784"


def produced_events(settings: Settings) -> float:
    """Events Kafka acknowledged so far, from the API's metrics (summed over its processes)."""
    text = httpx.get(f"{settings.api_url}/metrics").text
    match = re.search(
        rf'api_records_produced_total{{topic="{settings.topic_user_events}"}} (\S+)', text
    )
    return float(match.group(1)) if match else 0.0


class CpuSeen:
    """CPU seconds of a process tree, each process counted at its last sample: its processes
    end one by one, and a sum over the living ones would fall."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self.by_pid: dict[int, float] = {}

    def sample(self) -> float:
        with contextlib.suppress(psutil.NoSuchProcess):
            for member in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.by_pid[member.pid] = sum(member.cpu_times()[:2])
        return sum(self.by_pid.values())


def run_generator(
    settings: Settings, processes: int, seconds: float, concurrency: int, root: Path = ROOT
) -> tuple[float, float, int]:
    """Events/s acknowledged while the generator ran (after its warm-up), its CPU microseconds
    per event meanwhile (all its processes, orders included), and its exit code. `root` holds
    the `app` package it runs (another version's, for the baseline)."""
    command = [
        sys.executable, "-m", "app.generator", "--url", settings.api_url,
        "--processes", str(processes), "--users-per-second", str(USERS_PER_SECOND),
        "--concurrency", str(concurrency), "--duration", str(seconds), "--seed", "2026",
    ]  # fmt: skip
    generator = subprocess.Popen(
        command,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen = CpuSeen(psutil.Process(generator.pid))
    time.sleep(WARM_UP_SECONDS)  # processes spawned, shop built, connections open
    first, started, cpu_first = produced_events(settings), time.perf_counter(), seen.sample()
    # Sample until the generator stops sending (its last tick may run past --duration).
    last, ended, cpu_last = first, started, cpu_first
    while generator.poll() is None:
        time.sleep(0.5)
        now, cpu = produced_events(settings), seen.sample()
        if now > last:
            last, ended, cpu_last = now, time.perf_counter(), cpu
    _, errors = generator.communicate()
    if generator.returncode != 0:
        print(errors.decode(errors="replace")[-2000:], file=sys.stderr)
    if last == first:
        return 0.0, 0.0, generator.returncode or 1
    return (
        (last - first) / (ended - started),
        (cpu_last - cpu_first) / (last - first) * 1e6,
        generator.returncode,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="generator run length")
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="generator processes"
    )
    parser.add_argument("--concurrency", type=int, default=128, help="requests in flight each")
    parser.add_argument(
        "--baseline-ref", default=BASELINE_REF, help="the generator version to compare with"
    )
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    settings = get_settings().model_copy(
        update={
            "api_port": free_port(),
            "topic_user_events": f"bench-{tag}-UserEvents",
            "topic_purchased_item": f"bench-{tag}-PurchasedItem",
        }
    )
    topics = [settings.topic_user_events, settings.topic_purchased_item]
    print(
        f"bench_generator: {os.cpu_count()} cores, {load_average()} at start, API with "
        f"{settings.api_worker_count} server process(es)"
    )
    ensure_topics(settings, topics)
    events, _ = build_records(events=5_000, orders=0)
    requests = [http_request("PUT", "/SendEvent", e.to_json_bytes()) for e in events]

    api = None
    runs: dict[str, tuple[float, float, float, int, str]] = {}
    try:
        api = start_api(settings)
        api_process = psutil.Process(api.pid)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            pool.submit(run_load, settings.api_port, requests, 8, 2.0).result()  # warm-up
            baseline = pool.submit(run_load, settings.api_port, requests, 64, 8.0).result()
        baseline_rate = baseline.ok / baseline.seconds
        baseline_load = load_average()
        with tempfile.TemporaryDirectory(prefix="generator-baseline-") as old:
            archive = subprocess.run(
                ["git", "archive", args.baseline_ref, "app"], cwd=ROOT, capture_output=True,
                check=True,
            ).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
            for name, root in (("generator", ROOT), (f"at {args.baseline_ref[:8]}", Path(old))):
                api_before = tree_cpu(api_process) or 0.0
                events_before = produced_events(settings)
                rate, generator_cpu, code = run_generator(
                    settings, args.processes, args.seconds, args.concurrency, root
                )
                api_cpu = ((tree_cpu(api_process) or 0.0) - api_before) / max(
                    1.0, produced_events(settings) - events_before
                )
                runs[name] = (rate, generator_cpu, api_cpu, code, load_average())
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        admin = AdminClient({"bootstrap.servers": settings.kafka_servers})
        for deletion in admin.delete_topics(topics).values():
            deletion.result()

    print(
        f"  baseline, raw-HTTP load client (64 connections): {baseline_rate:,.0f} events/s "
        f"({baseline_load})"
    )
    for name, (rate, generator_cpu, api_cpu, code, load) in runs.items():
        if rate == 0:
            print(f"  {name}: no event acknowledged after the warm-up; exit code {code}")
            continue
        print(
            f"  {name}, {args.processes} processes x {args.concurrency} in flight: "
            f"{rate:,.0f} events/s  target >= {TARGET_EVENTS_PER_SECOND:,}; "
            f"{rate / baseline_rate:.0%} of baseline; generator {generator_cpu:.0f} us "
            f"CPU/event (one core: ~{1e6 / generator_cpu:,.0f} events/s), API "
            f"{api_cpu * 1e6:.0f} us CPU/event ({load})"
            + ("" if code == 0 else f"  GENERATOR EXITED {code}: not every record was accepted")
        )
    (new, new_cpu, *_), (old_rate, old_cpu, *_) = runs.values()
    if new and old_rate:
        print(f"  generator CPU per event: {new_cpu / old_cpu:.2f}x the baseline version's")
    return runs["generator"][3] or (0 if new else 1)


if __name__ == "__main__":
    sys.exit(main())
