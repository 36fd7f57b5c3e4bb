"""What a signup costs the database, counted: POST /subscribe must not silently grow more statements.

Benchmark 3 (200 signups/s on two cores) is won or lost on the round trips and per-statement work of this one
request, so the statements are counted here on the real database, both backends
(nurture/subscribers/signup_statements.py
describes them). On PostgreSQL a new address costs one statement: data-modifying CTEs count the rate-limit
hit and write the subscriber, the consent record, the outbox confirmation and the event. A known address
adds the row lock, the confirmation-quota count and the ledger rows for it; a repeat (the same address and
course within nurture.models.abuse_limits.CONFIRM_REPEAT_WINDOW) stops after the quota count. SQLite has no
data-modifying CTEs (one statement per row) and its transactions start with a ``BEGIN IMMEDIATE`` SQLAlchemy
also counts.

If a change needs another statement, make sure it does, then update the numbers here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event

from nurture.core import clock
from nurture.core.db import get_engine
from nurture.models import abuse_limits
from tests.support.web import row_counts

# (new address, known address, repeat of a signup moments ago) per backend
EXPECTED = {"postgresql": (1, 4, 3), "sqlite": (6, 8, 5)}
START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # on the hour: every signup below is in one rate-limit window


@contextmanager
def counted() -> Iterator[list[str]]:
    """Every statement SQLAlchemy sends through a cursor while the block runs, in order."""
    engine = get_engine()
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split())[:80])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_signup_runs_a_fixed_small_number_of_statements(prospect_client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    new, known, repeat = EXPECTED[get_engine().dialect.name]
    body = {"email": "ana@example.com", "consent": True}
    with clock.frozen(START) as advance:
        with counted() as statements:
            answer = prospect_client.post("/subscribe", json=body)
        assert answer.status_code == 202
        assert len(statements) == new, statements
        advance(abuse_limits.CONFIRM_REPEAT_WINDOW)  # no longer a repeat of the first
        with counted() as statements:
            answer = prospect_client.post("/subscribe", json=body)
        assert answer.status_code == 202
        assert len(statements) == known, statements
        with counted() as statements:
            answer = prospect_client.post("/subscribe", json=body)
        assert answer.status_code == 202
        assert len(statements) == repeat, statements
    # ...and every row still written: one subscriber, and per signup a consent record, a queued
    # confirmation, an event and the rate-limit counter (one row per prospect_client and window).
    counts = row_counts(app_factory)
    assert (counts["subscribers"], counts["consent_records"], counts["outbox_messages"]) == (1, 2, 2)
    assert (counts["events"], counts["rate_limit_counters"]) == (2, 1)


def test_a_form_signup_for_a_named_course_adds_only_the_course_check(prospect_client: TestClient) -> None:
    new, _, _ = EXPECTED[get_engine().dialect.name]
    with counted() as statements:
        answer = prospect_client.post(
            "/subscribe",
            data={"email": "ben@example.com", "consent": "yes", "sequence": "other"},
            follow_redirects=False,
        )
    assert answer.status_code == 303
    assert len(statements) == new + 1, statements


def test_repeat_and_refused_signups_use_up_no_ids(app_factory, set_env) -> None:  # type: ignore[no-untyped-def]
    """Nothing is inserted only to be rolled back or to conflict: on PostgreSQL that would still draw ids
    from the tables' sequences, and refused signups must not be a way to exhaust them."""
    from sqlalchemy import select

    from nurture.core.db import transaction
    from nurture.models import Subscriber
    from tests.support.public import make_client

    set_env(signup_ip_limit="3")
    with make_client("198.51.100.5") as client:
        assert client.post("/subscribe", json={"email": "a@example.com", "consent": True}).status_code == 202
        assert client.post("/subscribe", json={"email": "a@example.com", "consent": True}).status_code == 202
        bad_course = {"email": "b@example.com", "consent": True, "sequence": "no-such-course"}
        assert client.post("/subscribe", json=bad_course).status_code == 422
        assert client.post("/subscribe", json={"email": "c@example.com", "consent": True}).status_code == 202
        # The window is full: 429 comes first, whatever else is wrong with the signup.
        assert client.post("/subscribe", json={"email": "d@example.com", "consent": True}).status_code == 429
        assert client.post("/subscribe", json=bad_course).status_code == 429
    with make_client("198.51.100.6") as client:
        assert client.post("/subscribe", json={"email": "e@example.com", "consent": True}).status_code == 202
    with transaction(app_factory) as session:
        ids = dict(session.execute(select(Subscriber.email, Subscriber.id)).all())
    assert ids == {"a@example.com": 1, "c@example.com": 2, "e@example.com": 3}
