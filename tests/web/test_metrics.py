"""GET /metrics after real sends (SMTP on loopback, SQLite and PostgreSQL): outcomes, skip reasons, bounces,
signups, unsubscribes, backlog and lag from the database; send latency from the sender."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.delivery.metrics import DatabaseCollector
from nurture.models import Event, Subscriber, Suppression, events
from nurture.subscribers.enrollment import unsubscribe
from nurture.web.app import create_app
from tests.support.helpers import dispatch_inline, make_sender, subscribe, sync_sequences
from tests.support.processes import SmtpScript, SmtpServer, free_port

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, **headers: str) -> Samples:
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def world(factory, three_step, one_step):  # type: ignore[no-untyped-def]
    sync_sequences(factory)
    return factory


def test_metrics_count_what_happened_after_sending(world, set_env) -> None:  # type: ignore[no-untyped-def]
    script = SmtpScript(rcpt_replies={"gone@example.org": "550 5.1.1 no such mailbox"})
    with SmtpServer(script) as smtp, clock.frozen(START) as advance:
        set_env(smtp_url=smtp.url)
        for email in ("ana@example.org", "ben@example.org"):
            subscribe(world, email, "three-step")
        subscribe(world, "gone@example.org", "one-step")
        subscribe(world, "blocked@example.org", "one-step")
        with transaction(world) as session:
            session.add(Suppression(email="blocked@example.org", reason="manual"))
        client = TestClient(create_app())

        advance(timedelta(milliseconds=500))
        before = scrape(client)
        assert value(before, "nurture_database_up") == 1
        assert value(before, "nurture_due_backlog") == 4  # the first step of each enrollment
        assert value(before, "nurture_due_lag_seconds") == pytest.approx(0.5)
        assert value(before, "nurture_deliveries_scheduled") == 8
        assert value(before, "nurture_signups_total", via="staff") == 4
        assert value(before, "nurture_deliveries_total", outcome="sent") == 0

        outcomes = dispatch_inline(world, make_sender(world))
        assert outcomes == {"sent": 2, "failed": 1, "skipped:suppressed": 1}
        after = scrape(client)

        with transaction(world) as session:
            ben = session.scalar(select(Subscriber).where(Subscriber.email == "ben@example.org"))
            unsubscribe(session, ben, source="link")
        last = scrape(client)

    assert value(after, "nurture_deliveries_total", outcome="sent") == 2
    assert value(after, "nurture_deliveries_total", outcome="bounced") == 1
    assert value(after, "nurture_deliveries_total", outcome="skipped") == 1
    assert value(after, "nurture_delivery_skips_total", reason="suppressed") == 1
    assert value(after, "nurture_delivery_skips_total", reason="unsubscribed") == 0
    assert value(after, "nurture_bounces_total", kind="hard") == 1
    assert value(after, "nurture_due_backlog") == 0 and value(after, "nurture_due_lag_seconds") == 0
    assert value(after, "nurture_deliveries_scheduled") == 4  # steps 2 and 3 for Ana and Ben
    assert value(after, "nurture_deliveries_in_flight", status="queued") == 0
    assert value(after, "nurture_events_total", kind="enrolled") == 4
    # Measured in the sender, per delivery, in this process (no multiprocess folder in this test).
    assert value(after, "nurture_send_seconds_count", outcome="sent") == 2
    assert value(after, "nurture_send_seconds_count", outcome="failed") == 1
    assert value(after, "nurture_send_seconds_sum", outcome="sent") > 0

    assert value(last, "nurture_unsubscribes_total") == 1
    assert value(last, "nurture_deliveries_scheduled") == 2  # Ben's were cancelled with the unsubscribe
    assert value(last, "nurture_deliveries_total", outcome="sent") == 2  # counters never go back
    # Defined now, zero until the rate limiter waits or the breaker opens.
    assert value(last, "nurture_rate_limit_waits_total") == 0
    assert value(last, "nurture_circuit_breaker_state") == 0


def test_event_totals_are_counted_incrementally_and_match_a_full_recount(world) -> None:  # type: ignore[no-untyped-def]
    incremental = DatabaseCollector(world, settle_seconds=60)

    def record(kind: str, n: int, **detail: str) -> None:
        with transaction(world) as session:
            for _ in range(n):
                events.record(session, kind, **detail)

    def totals(collector: DatabaseCollector) -> dict[tuple[str, str], int]:
        return dict(collector.snapshot()["events"])

    with clock.frozen(START) as advance:
        record("sent", 3)
        assert totals(incremental) == {("sent", ""): 3}
        advance(timedelta(minutes=5))  # the first three are now older than the settle window: folded in
        record("sent", 2)
        record("skipped", 1, reason="unsubscribed")
        expected = {("sent", ""): 5, ("skipped", "unsubscribed"): 1}
        assert totals(incremental) == expected
        assert totals(incremental) == expected  # a repeat scrape counts nothing twice
        assert totals(DatabaseCollector(world)) == expected  # a new process recounts to the same totals
        assert incremental._settled_id > 0  # the old rows really were folded, not recounted

        with transaction(world) as session:  # an emptied (or restored) database starts the count again
            session.execute(delete(Event))
        assert totals(incremental) == {}
        record("sent", 1)
        assert totals(incremental) == {("sent", ""): 1}


def test_metrics_still_answer_when_the_database_is_down(set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(database_url=f"postgresql://nurture@127.0.0.1:{free_port()}/nurture")
    samples = scrape(TestClient(create_app()))
    assert value(samples, "nurture_database_up") == 0
    assert ("nurture_due_backlog", frozenset()) not in samples
    assert value(samples, "nurture_rate_limit_waits_total") == 0


def test_a_metrics_token_is_required_when_configured(sqlite_url, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(database_url=sqlite_url, metrics_token="scrape-me-0123456789")
    client = TestClient(create_app())
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    samples = scrape(client, Authorization="Bearer scrape-me-0123456789")
    assert value(samples, "nurture_database_up") == 1
