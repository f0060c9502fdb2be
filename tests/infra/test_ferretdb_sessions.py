"""The lab's FerretDB build answers `endSessions` (infra/ferretdb/build.sh, fix 9). pymongo sends
it each time a client that used a session closes; upstream refused it and logged the refusal at
WARN with the whole wire message, a few times a minute in a running lab."""

from __future__ import annotations

import time

import pytest

from app.core.clients import mongo_client
from app.core.config import Settings
from app.infra.mode import resolve_mode
from app.infra.mongo import Mongo

REFUSAL = "no such command: 'endSessions'"


def test_closing_a_client_ends_its_sessions_without_a_refusal(
    isolated_settings: Settings,
) -> None:
    mongo = Mongo(isolated_settings)
    if resolve_mode(isolated_settings) != "local" or mongo.mongod:
        pytest.skip("fix 9 is the local FerretDB's (Docker and mongod answer endSessions)")
    log = mongo.files.log
    refusals_before = log.read_text(errors="replace").count(REFUSAL)
    client = mongo_client(isolated_settings)
    try:
        collection = client[isolated_settings.mongo_database]["sessions_probe"]
        collection.insert_one({"n": 1})  # an implicit session, ended when the client closes
        assert client.admin.command("endSessions", [])["ok"] == 1.0
    finally:
        collection.drop()
        client.close()
    time.sleep(0.5)  # the server logs what it answered as it answers: let it land
    assert log.read_text(errors="replace").count(REFUSAL) == refusals_before
