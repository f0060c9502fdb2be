"""The lab's FerretDB build removes a dropped database's write-ahead log with it
(infra/ferretdb/build.sh, fix 8). Upstream removed only `<name>.sqlite`: the `-wal` and `-shm`
files stayed, a database created again under the same name opened beside them, and the server
died of SIGBUS at the end of a soak, then would not start."""

from __future__ import annotations

import pytest

from app.core.clients import mongo_client
from app.core.config import Settings
from app.infra.mode import resolve_mode
from app.infra.mongo import Mongo


def test_a_dropped_database_leaves_no_file_and_can_be_created_again(
    isolated_settings: Settings,
) -> None:
    mongo = Mongo(isolated_settings)
    if resolve_mode(isolated_settings) != "local" or mongo.mongod:
        pytest.skip("the SQLite files are the local FerretDB's (Docker and mongod keep their own)")
    name = f"{isolated_settings.mongo_database}_drop"
    client = mongo_client(isolated_settings)
    try:
        client[name]["events"].insert_many([{"_id": n, "pad": "x" * 200} for n in range(5_000)])
        assert sorted(p.name for p in mongo.data_dir.glob(f"{name}.sqlite*"))  # it has files
        client.drop_database(name)
        assert sorted(p.name for p in mongo.data_dir.glob(f"{name}.sqlite*")) == []
        client[name]["events"].insert_many([{"_id": n} for n in range(10)])
        assert client[name]["events"].count_documents({}) == 10
    finally:
        client.drop_database(name)
        client.close()
