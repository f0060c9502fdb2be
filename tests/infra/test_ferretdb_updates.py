"""The lab's FerretDB build writes the statements of one `update` command in one transaction
(infra/ferretdb/build.sh, fix 7). What a client sees must be what it saw with a transaction per
statement: each statement reads the writes before it, the counts are MongoDB's, and the
statements before a failing one stay written."""

from __future__ import annotations

from pymongo import UpdateMany, UpdateOne

from app.core.clients import mongo_client
from app.core.config import Settings


def test_statements_of_one_update_command_see_the_writes_before_them(
    isolated_settings: Settings,
) -> None:
    client = mongo_client(isolated_settings)
    collection = client[isolated_settings.mongo_database]["updates"]
    collection.insert_many(
        [{"_id": "a", "Version": 1, "g": 1, "n": 0}, {"_id": "b", "Version": 1, "g": 1, "n": 0}]
    )
    result = collection.bulk_write(
        [
            UpdateOne({"_id": "a", "Version": 1}, {"$set": {"Version": 2}}),
            # Matches only after the statement before it is written.
            UpdateOne({"_id": "a", "Version": 2}, {"$set": {"Version": 3}}),
            UpdateOne({"_id": "a", "Version": 1}, {"$set": {"Version": 9}}),  # stale: no match
            UpdateMany({"g": 1}, {"$inc": {"n": 1}}),  # no _id: reads every write before it
            UpdateOne({"_id": "new"}, {"$set": {"n": 10}}, upsert=True),
            UpdateOne({"_id": "new"}, {"$inc": {"n": 1}}),
            UpdateOne({"_id": "b"}, {"$inc": {"n": 1}}),
        ]
    )
    assert (result.matched_count, result.modified_count) == (6, 6)
    # FerretDB 1.24 numbers upserts among upserts, not among statements (mongod: {4: "new"}).
    assert list((result.upserted_ids or {}).values()) == ["new"]
    assert {d["_id"]: (d.get("Version"), d["n"]) for d in collection.find()} == {
        "a": (3, 1),
        "b": (1, 2),
        "new": (None, 11),
    }
    client.close()


def test_a_command_of_more_updates_than_are_held_at_once_writes_them_all(
    isolated_settings: Settings,
) -> None:
    client = mongo_client(isolated_settings)
    collection = client[isolated_settings.mongo_database]["many_updates"]
    collection.insert_many([{"_id": f"k{i:05}", "Version": 1} for i in range(2_500)])
    result = collection.bulk_write(
        [
            UpdateOne({"_id": f"k{i:05}", "Version": 1}, {"$set": {"Version": 2}})
            for i in range(2_500)
        ],
        ordered=False,
    )
    assert result.matched_count == result.modified_count == 2_500
    assert collection.count_documents({"Version": 2}) == 2_500
    client.close()


def test_the_statements_before_a_failing_one_stay_written(isolated_settings: Settings) -> None:
    client = mongo_client(isolated_settings)
    database = client[isolated_settings.mongo_database]
    database["failing_update"].insert_many([{"_id": "a", "n": 0}, {"_id": "b", "n": "text"}])
    # The raw command: FerretDB 1.24's error reply lacks the counts pymongo's bulk_write reads.
    reply = database.command(
        "update",
        "failing_update",
        updates=[
            {"q": {"_id": "a"}, "u": {"$inc": {"n": 1}}},
            {"q": {"_id": "b"}, "u": {"$inc": {"n": 1}}},  # $inc on a string: refused
        ],
    )
    assert reply["writeErrors"][0]["code"] == 14  # TypeMismatch
    assert database["failing_update"].find_one({"_id": "a"}) == {"_id": "a", "n": 1}
    client.close()
