"""Benchmark: what FerretDB spends on each counts update, two builds side by side in one run.

Each binary runs on a free port with a data directory of its own and the lab's flags (SQLite,
WAL, `synchronous=NORMAL`), holding `--pairs` counts documents as refreshes leave them. In
alternating rounds, `EventStore.write_counts` then rewrites every one of them as
`app.pipeline.counts` does (one update per pair, `_id` and `Version` in its filter, 50 updates a
command, `counts_write_threads` commands in flight), and `find_by_ids` reads them back (`$in`).
Prints, per build, the median time per update, FerretDB's CPU per update (its process's CPU time)
and the time per read, their ratios, and the load average.

The candidate is the lab's build (`./scripts/lab install` makes it); the baseline is another
binary, by default the build before patches 5-7 of infra/ferretdb/build.sh if it was kept at
`.lab/bin/ferretdb-1.24.2-4fixes` (the lab does not keep it: copy the old binary there before a
rebuild to compare). Without a baseline only the candidate is measured.

    .venv/bin/python bench/bench_counts_update.py [--pairs 5000] [--rounds 5]
        [--baseline PATH] [--candidate PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed

# Run as a script from anywhere: the repository root holds the `app` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.clients import Document, mongo_client
from app.core.config import Settings, get_settings
from app.infra.mongo import Mongo
from app.pipeline.counts import new_count
from app.pipeline.store import EventStore

TARGET_US = 200  # a pair's update at 10,000 events/s of counts (docs/performance.md)
PARTITIONS = ["6f1c2b8e-topic:0", "6f1c2b8e-topic:1", "6f1c2b8e-topic:2"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class BenchMongo(Mongo):
    """A FerretDB `binary` as it is, never built, under a service name of its own (so its data
    directory, log and pid file are apart from the lab's)."""

    def __init__(self, settings: Settings, binary: Path) -> None:
        self.name = f"mongo-bench-{uuid.uuid4().hex[:8]}"
        super().__init__(settings)
        self.binary = binary

    @property
    def mongod(self) -> str | None:
        return None

    @property
    def ferretdb_binary(self) -> Path:
        return self.binary

    def install(self) -> None:
        pass


@contextmanager
def spare_ferretdb(base: Settings, binary: Path) -> Iterator[tuple[Settings, BenchMongo]]:
    """(settings pointing at it, the service): `binary` started on a free port, with a data
    directory of its own."""
    settings = base.model_copy(
        update={
            "mongo_url": f"mongodb://127.0.0.1:{free_port()}",
            "mongo_database": f"bench_{uuid.uuid4().hex[:8]}",
        }
    )
    service = BenchMongo(settings, binary)
    service.start()
    try:
        yield settings, service
    finally:
        service.stop()
        shutil.rmtree(service.data_dir, ignore_errors=True)
        service.files.log.unlink(missing_ok=True)


def counts_documents(pairs: int) -> list[Document]:
    documents = []
    for n in range(pairs):
        document = new_count(f"bench-user-{n // 2}", ["PageVisited", "AddedBasket"][n % 2])
        document["EventCount"] = 7
        document["CountedUpTo"] = dict.fromkeys(PARTITIONS[: 1 + n % 3], 1_000 + n)
        document["Version"] = 1
        documents.append(document)
    return documents


class Server:
    """One binary under test with its counts collection, and the times of its rounds."""

    def __init__(self, label: str, settings: Settings, service: BenchMongo, pairs: int) -> None:
        self.label = label
        pid = service.pid()
        assert pid is not None
        self.process = psutil.Process(pid)
        self.client = mongo_client(settings)
        self.store = EventStore.connect(settings, self.client)
        self.store.ensure_indexes()
        self.documents = counts_documents(pairs)
        self.store.counts.insert_many(self.documents, ordered=False)
        self.update_us: list[float] = []
        self.update_cpu_us: list[float] = []
        self.read_us: list[float] = []

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def round(self) -> None:
        """Read every pair, add one event to each, write them all back, as a refresh does."""
        ids = [document["_id"] for document in self.documents]
        started = time.perf_counter()
        counts = self.store.find_by_ids(self.store.counts, ids)
        self.read_us.append((time.perf_counter() - started) / len(ids) * 1e6)
        for document in counts.values():
            document["EventCount"] += 1
            document["CountedUpTo"][PARTITIONS[0]] = document["CountedUpTo"][PARTITIONS[0]] + 1
        started, cpu = time.perf_counter(), self.cpu_seconds()
        lost = self.store.write_counts(list(counts.values()), set(counts))
        self.update_us.append((time.perf_counter() - started) / len(ids) * 1e6)
        self.update_cpu_us.append((self.cpu_seconds() - cpu) / len(ids) * 1e6)
        if lost:
            raise SystemExit(f"{self.label}: {len(lost)} updates did not land")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="update commands in flight (default: settings)")
    settings = get_settings()
    parser.add_argument(
        "--baseline", type=Path, default=settings.lab_home / "bin" / "ferretdb-1.24.2-4fixes"
    )
    parser.add_argument("--candidate", type=Path, default=Mongo(settings).ferretdb_binary)
    args = parser.parse_args()
    if args.threads:
        settings = settings.model_copy(update={"counts_write_threads": args.threads})

    binaries = {"candidate": args.candidate}
    if args.baseline.exists():
        binaries["baseline"] = args.baseline
    else:
        print(f"no baseline binary at {args.baseline}: measuring the candidate alone")
    print(
        f"{args.pairs:,} counts documents a server, {args.rounds} rounds, "
        f"{settings.counts_write_threads} update commands in flight"
    )
    for label, binary in binaries.items():
        print(f"  {label:9}: {binary}")

    with ExitStack() as stack:
        servers = []
        for label, binary in binaries.items():
            server_settings, service = stack.enter_context(spare_ferretdb(settings, binary))
            servers.append(Server(label, server_settings, service, args.pairs))
            stack.callback(servers[-1].client.close)
        load = os.getloadavg()
        for _ in range(args.rounds):
            for server in servers:  # alternating, so both see the same load
                server.round()
        load_after = os.getloadavg()

    print(f"\nmedian over {args.rounds} rounds (load average {load[0]:.2f} → {load_after[0]:.2f})")
    figures = {}
    for server in servers:
        update, cpu = statistics.median(server.update_us), statistics.median(server.update_cpu_us)
        figures[server.label] = update, cpu
        print(
            f"  {server.label:9}: update {update:6.0f} µs a pair (target ≤ {TARGET_US} µs), "
            f"FerretDB CPU {cpu:4.0f} µs a pair; read {statistics.median(server.read_us):4.0f} µs"
            f" a pair; update µs by round: {', '.join(f'{u:.0f}' for u in server.update_us)}"
        )
    if "baseline" in figures:
        (update, cpu), (base_update, base_cpu) = figures["candidate"], figures["baseline"]
        print(
            f"  candidate / baseline: update time {update / base_update:.2f}, "
            f"FerretDB CPU {cpu / base_cpu:.2f}"
        )


if __name__ == "__main__":
    main()
