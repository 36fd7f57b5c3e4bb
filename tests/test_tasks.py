"""The once-a-minute housekeeping task: scheduled sequences become active when their time comes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nurture.core import clock
from nurture.core.db import transaction
from nurture.sequences.control import schedule
from nurture.sequences.sync import get_sequence
from nurture.tasks import housekeeping
from tests.support.helpers import sync_sequences


def test_housekeeping_activates_a_scheduled_sequence_only_once_its_time_has_come(factory, three_step) -> None:  # type: ignore[no-untyped-def]
    sync_sequences(factory)
    start = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    with clock.frozen(start) as advance:
        with transaction(factory) as session:
            schedule(session, get_sequence(session, "three-step"), start + timedelta(hours=1))
        assert housekeeping.run() == {"activated": 0, "purged": 0, "forgotten": 0}
        with transaction(factory) as session:
            assert get_sequence(session, "three-step").status == "scheduled"
        advance(timedelta(hours=1))
        assert housekeeping.run()["activated"] == 1
        with transaction(factory) as session:
            assert get_sequence(session, "three-step").status == "active"
