"""Going from one Kafka broker to three and back (issue 13): the counts stay exact.

Each cluster size keeps a storage of its own, so after a switch the drain reads topics of the
same names with other topic ids and other offsets, and the group's commits of the other
cluster. Two spare clusters (one node, three nodes) stand for the two sizes; the drain runs
against one, then the other, then the first again, into one MongoDB database.
"""

from __future__ import annotations

import uuid

import pytest

from app.core.clients import mongo
from app.core.config import Settings
from app.pipeline.counts import refresh_event_counts
from app.pipeline.drain import drain_user_events
from tests.pipeline.helpers import expected_counts, make_events, produce_events, stored_counts
from tests.support import make_isolated_settings, spare_kafka_cluster

pytestmark = pytest.mark.slow


def _drain_and_count(settings: Settings) -> int:
    stored = drain_user_events(settings).stored
    refresh_event_counts(settings)
    return stored


def test_counts_stay_exact_from_one_broker_to_three_and_back(lab_services: Settings) -> None:
    tag = f"test-switch-{uuid.uuid4().hex[:6]}"
    isolated = make_isolated_settings(lab_services, tag)
    events = make_events(60, users=10, seed=13)
    try:
        # The same topic name on both, as the lab's two sizes have.
        topic = f"{tag}-UserEvents"
        with (
            spare_kafka_cluster(isolated, f"{tag}-1", 1, topic_user_events=topic) as (one,),
            spare_kafka_cluster(isolated, f"{tag}-3", 3, topic_user_events=topic) as three,
        ):
            on_one, on_three = one.settings, three[0].settings
            produce_events(on_one, events[:20])
            assert _drain_and_count(on_one) == 20
            produce_events(on_three, events[20:40])
            assert _drain_and_count(on_three) == 20  # a new topic id: read from its start
            produce_events(on_one, events[40:])
            # Back on one broker: its topic is read again from the start, the 20 events
            # stored before are recognised, the 20 new ones stored.
            assert _drain_and_count(on_one) == 20
            assert stored_counts(on_one) == expected_counts(events)
    finally:
        with mongo(isolated) as client:
            client.drop_database(isolated.mongo_database)
