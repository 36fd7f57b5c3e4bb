"""Abuse limits: signups per client IP, confirmation emails per address per day; 429 + Retry-After, nothing
stored; the counters are atomic under concurrency on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.models.abuse_limits import RateLimited, client_key
from nurture.subscribers import consent
from nurture.subscribers.signup import SignupForm, signup
from tests.support.public import make_client
from tests.support.web import row_counts, snapshot

START = datetime(2026, 12, 1, 10, 0, 30, tzinfo=UTC)  # 30 s into an hour window


def _json(client: TestClient, email: str):  # type: ignore[no-untyped-def]
    return client.post("/subscribe", json={"email": email, "consent": True})


def test_per_ip_limit_answers_429_with_retry_after_and_stores_nothing(app_factory, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(signup_ip_limit="3", signup_ip_window_seconds="3600")
    with clock.frozen(START) as advance, make_client("198.51.100.1") as client:
        for n in range(3):
            assert _json(client, f"p{n}@example.com").status_code == 202
        before = snapshot(app_factory)
        refused = _json(client, "p3@example.com")
        assert refused.status_code == 429 and refused.headers["retry-after"] == str(3600 - 30)
        assert refused.json() == {"error": "rate-limited", "retry_after": 3570}
        form = client.post(
            "/subscribe", data={"email": "p3@example.com", "consent": "yes"}, follow_redirects=False
        )
        assert form.status_code == 429 and "Too many attempts" in form.text
        assert form.headers["retry-after"] == "3570"
        assert snapshot(app_factory) == before  # not even the counter moved
        with make_client("198.51.100.2") as other:
            assert _json(other, "p3@example.com").status_code == 202  # another client is not affected
        advance(timedelta(seconds=3570))
        assert _json(client, "p4@example.com").status_code == 202  # a new window


def test_ipv6_clients_are_counted_per_64_and_keys_hold_no_address() -> None:
    secret = "s" * 40
    same = (
        client_key("signup", "2001:db8:1:2::1", secret),
        client_key("signup", "2001:db8:1:2:ffff::9", secret),
    )
    assert same[0] == same[1]
    assert client_key("signup", "2001:db8:1:3::1", secret) != same[0]
    assert client_key("signup", "::ffff:192.0.2.1", secret) == client_key("signup", "192.0.2.1", secret)
    assert "192.0.2.1" not in client_key("signup", "192.0.2.1", secret)


def test_per_address_daily_limit_across_clients(app_factory, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(confirm_daily_limit="3")
    with clock.frozen(START) as advance:
        for n in range(3):
            with make_client(f"192.0.2.{n + 1}") as client:
                assert _json(client, "victim@example.com").status_code == 202
            advance(timedelta(hours=1))
        before = snapshot(app_factory)
        with make_client("192.0.2.99") as client:
            refused = _json(client, "Victim@Example.com")
            # The oldest of the three was sent 3 h ago: a slot frees 21 h from now.
            assert refused.status_code == 429 and refused.headers["retry-after"] == str(21 * 3600)
            assert snapshot(app_factory) == before
            assert _json(client, "someone-else@example.com").status_code == 202
            advance(timedelta(hours=21, seconds=1))
            assert _json(client, "victim@example.com").status_code == 202
    assert row_counts(app_factory)["outbox_messages"] == 5


def test_concurrent_signups_from_one_client_never_exceed_the_limit(app_factory, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(signup_ip_limit="5")
    settings = get_settings()
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(12)

    def attempt(n: int) -> None:
        form = SignupForm(f"c{n}@example.com", None, None, None, consent.CURRENT, "api")
        barrier.wait()
        try:
            signup(app_factory, form, consent.Origin.of("198.51.100.77", "ua"), settings)
            result = "stored"
        except RateLimited:
            result = "limited"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["limited"] * 7 + ["stored"] * 5
    counts = row_counts(app_factory)
    assert (counts["subscribers"], counts["consent_records"], counts["outbox_messages"]) == (5, 5, 5)


def test_concurrent_first_signups_of_one_address_make_one_subscriber(app_factory) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def attempt(n: int) -> None:
        form = SignupForm("same@example.com", None, None, None, consent.CURRENT, "api")
        barrier.wait()
        try:
            signup(app_factory, form, consent.Origin.of(f"198.51.100.{n}", "ua"), settings)
        except BaseException as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    counts = row_counts(app_factory)
    # The first one queues the confirmation; the others, moments later, are repeats that queue nothing.
    assert (counts["subscribers"], counts["consent_records"], counts["outbox_messages"]) == (1, 1, 1)


@pytest.mark.parametrize("ip", ["testclient", ""])
def test_clients_without_a_usable_address_still_get_a_bucket(ip: str) -> None:
    assert client_key("signup", ip or None, "k" * 40).startswith("signup:")
