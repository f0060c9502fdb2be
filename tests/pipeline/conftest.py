"""A MongoDB of the test's own, which a test may stop and start again."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Iterator

import pytest

from app.core.config import Settings
from app.infra.mongo import Mongo


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def spare_mongo(lab_services: Settings) -> Iterator[tuple[Settings, Mongo]]:
    """(settings pointing at it, the service): a second MongoDB (FerretDB), on a free port.

    Its own service name gives it its own data directory, log and pid file; the server binary
    is the lab's.
    """
    settings = lab_services.model_copy(update={"mongo_url": f"mongodb://127.0.0.1:{_free_port()}"})
    service_class = type("SpareMongo", (Mongo,), {"name": f"mongo-test-{uuid.uuid4().hex[:8]}"})
    mongo: Mongo = service_class(settings)
    mongo.start()
    try:
        yield settings, mongo
    finally:
        mongo.stop()
        shutil.rmtree(mongo.data_dir, ignore_errors=True)
        mongo.files.log.unlink(missing_ok=True)
