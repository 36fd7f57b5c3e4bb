"""Abuse of the public pages and the staff sign-in, on real databases: click floods, signup bursts, /metrics
left open, parallel password guesses, ids that only look like numbers, an unset NURTURE_ENV and link tokens
in logs. Races run on PostgreSQL with real threads; time moves only through nurture.core.clock."""

# ruff: noqa: F811  (fixtures imported from the modules that define them are redefined by name)

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock, tokens
from nurture.core.config import ConfigError, Environment, get_settings
from nurture.core.db import transaction
from nurture.models import (
    ConsentRecord,
    Event,
    ExternalEvent,
    LinkClick,
    OutboxMessage,
    StaffUser,
    WebhookDelivery,
    WebhookEndpoint,
)
from nurture.staff import accounts as staff
from nurture.subscribers import consent
from nurture.subscribers.signup import SignupForm, confirm, signup
from nurture.webhooks import fanout
from nurture.webhooks import secrets as endpoint_secrets
from tests.conftest import (
    TEST_SECRET,
    processes,  # noqa: F401 (a fixture: real processes, logs on failure)
)
from tests.subscribers.test_clicks import CONTACT, COURSE, START, TRACKED, parts, send_first
from tests.support.helpers import sync_sequences
from tests.support.processes import Processes, free_port, wait_until
from tests.support.public import OTHER, TWO_STEP
from tests.support.staff import PASSWORD, csrf_of, login

BASE = "https://nurture.test"
REAL_POSTAL = "1 Main Street, Springfield, IL 62701, USA"


def app_client(ip: str = "203.0.113.50", **kwargs: Any) -> TestClient:
    from nurture.web.app import create_app

    return TestClient(create_app(), client=(ip, 50000), base_url=BASE, follow_redirects=False, **kwargs)


def count(factory: sessionmaker[Session], model: Any, *where: Any) -> int:
    with transaction(factory) as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def run_threads(target: Callable[[int], None], n: int) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- item 4: click floods ---------------------------------------------------------------------------------


def _linked(factory: sessionmaker[Session], sequences_dir: Path) -> sessionmaker[Session]:
    """The goal-link course, and a webhook endpoint that wants every click and goal."""
    (sequences_dir / "course.yaml").write_text(COURSE)
    sync_sequences(factory)
    sealed = endpoint_secrets.seal(endpoint_secrets.generate(), get_settings())
    with transaction(factory) as session:
        session.add(
            WebhookEndpoint(
                url="https://hooks.example.org/in",
                event_types=["clicked", "goal_met"],
                secret=sealed,
                created_at=START - timedelta(hours=1),
            )
        )
    return factory


@pytest.fixture
def linked(factory: sessionmaker[Session], sequences_dir: Path) -> sessionmaker[Session]:
    return _linked(factory, sequences_dir)


def click_tokens(factory: sessionmaker[Session], *emails: str) -> list[str]:
    outbox = send_first(factory, *emails)
    by_recipient = {m.recipient: TRACKED.search(parts(m.data)[2]).group(1) for m in outbox.outbox}  # type: ignore[union-attr]
    return [by_recipient[email] for email in emails]


def webhooks_for(factory: sessionmaker[Session], event_type: str) -> int:
    with transaction(factory) as session:
        fanout.pump(session, get_settings())
    return count(factory, WebhookDelivery, WebhookDelivery.event_type == event_type)


def test_a_click_flood_counts_once_per_window_and_every_click_still_redirects(linked) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START) as advance:
        [token] = click_tokens(linked, "ana@example.com")
        with app_client() as client:
            answers = [client.get(f"/l/{token}") for _ in range(100)]
        assert {(a.status_code, a.headers["location"]) for a in answers} == {(302, CONTACT)}
        assert count(linked, LinkClick) == 1
        assert count(linked, Event, Event.kind == "clicked") == 1
        assert count(linked, ExternalEvent) == 1  # the link's goal, reported once
        assert webhooks_for(linked, "clicked") == webhooks_for(linked, "goal_met") == 1
        # Once the window is over, the same person's next click is a new click.
        from nurture.subscribers.clicks import HIT_WINDOW_SECONDS

        advance(timedelta(seconds=HIT_WINDOW_SECONDS + 1))
        with app_client() as client:
            assert client.get(f"/l/{token}").headers["location"] == CONTACT
        assert count(linked, LinkClick) == 2
        assert webhooks_for(linked, "clicked") == 2


def test_clicks_over_the_per_ip_limit_still_redirect_but_record_nothing(linked, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(click_ip_limit="3")
    emails = [f"p{n}@example.com" for n in range(5)]
    with clock.frozen(START):
        links = click_tokens(linked, *emails)
        with app_client("198.51.100.20") as crowd:
            for token in links:
                answer = crowd.get(f"/l/{token}")
                assert (answer.status_code, answer.headers["location"]) == (302, CONTACT)
        assert count(linked, LinkClick) == 3
        assert count(linked, Event, Event.kind == "clicked") == 3
        with app_client("198.51.100.21") as elsewhere:  # another client has its own allowance
            assert elsewhere.get(f"/l/{links[4]}").status_code == 302
        assert count(linked, LinkClick) == 4


def test_parallel_clicks_of_one_link_count_once_on_postgresql(pg_factory, sequences_dir) -> None:  # type: ignore[no-untyped-def]
    world = _linked(pg_factory, sequences_dir)
    n = 8
    with clock.frozen(START):
        [token] = click_tokens(world, "ana@example.com")
        clients = [app_client(f"192.0.2.{i + 1}").__enter__() for i in range(n)]
        barrier = threading.Barrier(n)
        answers: list[int] = []

        def click(i: int) -> None:
            barrier.wait()
            answers.append(clients[i].get(f"/l/{token}").status_code)

        try:
            run_threads(click, n)
        finally:
            for client in clients:
                client.__exit__(None, None, None)
        assert answers == [302] * n
        assert count(world, LinkClick) == 1
        assert count(world, Event, Event.kind == "clicked") == 1
        assert webhooks_for(world, "clicked") == 1


# --- item 5: one confirmation per signup burst -------------------------------------------------------------


@pytest.fixture
def courses(factory: sessionmaker[Session], sequences_dir: Path, set_env) -> sessionmaker[Session]:  # type: ignore[no-untyped-def]
    (sequences_dir / "two-step.yaml").write_text(TWO_STEP)
    (sequences_dir / "other.yaml").write_text(OTHER)
    set_env(default_sequence="two-step")
    sync_sequences(factory)
    return factory


def confirmations(factory: sessionmaker[Session]) -> int:
    return count(factory, OutboxMessage, OutboxMessage.kind == "confirm")


def test_a_repeat_signup_within_minutes_queues_nothing_and_answers_the_same(courses) -> None:  # type: ignore[no-untyped-def]
    body = {"email": "ana@example.com", "consent": True}
    with clock.frozen(START) as advance, app_client() as client:
        first = client.post("/subscribe", json=body)
        advance(timedelta(seconds=20))
        again = client.post("/subscribe", json={**body, "email": " Ana@Example.com"})
        form = client.post("/subscribe", data={"email": "ana@example.com", "consent": "yes"})
        assert first.status_code == again.status_code == 202 and first.json() == again.json()
        assert form.status_code == 303 and form.headers["location"] == "/subscribe/check-your-inbox"
        assert confirmations(courses) == 1
        assert count(courses, ConsentRecord) == 1
        # Five minutes after the first email, a signup queues another (the daily cap still applies)...
        advance(timedelta(minutes=5))
        assert client.post("/subscribe", json=body).status_code == 202
        assert confirmations(courses) == 2
        # ...and a burst of repeats of an address already on file queues nothing either.
        for _ in range(3):
            assert client.post("/subscribe", json=body).status_code == 202
        assert confirmations(courses) == 2


def test_another_course_or_a_used_confirmation_is_not_a_repeat(courses) -> None:  # type: ignore[no-untyped-def]
    """A repeat is the same course while its confirmation waits: a second course signed up for a minute
    later gets its own email, and so does the same course once the first link was used."""
    body = {"email": "ana@example.com", "consent": True}
    with clock.frozen(START) as advance, app_client() as client:
        assert client.post("/subscribe", json=body).status_code == 202
        advance(timedelta(minutes=1))
        assert client.post("/subscribe", json={**body, "sequence": "other"}).status_code == 202
        assert confirmations(courses) == 2
        with transaction(courses) as session:
            for record in session.scalars(select(ConsentRecord)).all():
                assert confirm(session, record.public_id, consent.Origin.of("203.0.113.50", "ua")) is not None
        advance(timedelta(minutes=1))
        assert client.post("/subscribe", json=body).status_code == 202
    assert confirmations(courses) == 3


def test_concurrent_signups_of_one_address_queue_one_confirmation_on_postgresql(
    pg_factory, sequences_dir, set_env
) -> None:  # type: ignore[no-untyped-def]
    (sequences_dir / "two-step.yaml").write_text(TWO_STEP)
    set_env(default_sequence="two-step")
    sync_sequences(pg_factory)
    settings = get_settings()
    errors: list[BaseException] = []

    def burst(n: int) -> None:
        barrier = threading.Barrier(n)

        def attempt(i: int) -> None:
            form = SignupForm("same@example.com", None, None, None, consent.CURRENT, "api")
            barrier.wait()
            try:
                signup(pg_factory, form, consent.Origin.of(f"198.51.100.{i + 1}", "ua"), settings)
            except BaseException as exc:  # collected: a thread's failure must fail the test
                errors.append(exc)

        run_threads(attempt, n)

    with clock.frozen(START) as advance:
        burst(4)  # a new address: every signup races to create it
        assert errors == [] and confirmations(pg_factory) == 1
        advance(timedelta(minutes=6))
        burst(4)  # an address on file: every signup races past the quota check
        assert errors == [] and confirmations(pg_factory) == 2


# --- item 8: /metrics in production, parallel sign-in attempts ---------------------------------------------


def test_metrics_are_closed_in_production_until_a_token_is_set(sqlite_url, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(database_url=sqlite_url, env="production", postal_address=REAL_POSTAL, metrics_token="")
    closed = app_client().get("/metrics")
    assert closed.status_code == 403 and "NURTURE_METRICS_TOKEN" in closed.text
    assert "nurture_" not in closed.text
    set_env(metrics_token="scrape-me-0123456789")
    guarded = app_client()
    assert guarded.get("/metrics").status_code == 401
    assert (
        guarded.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"}).status_code == 200
    )
    set_env(env="test", metrics_token="")
    assert app_client().get("/metrics").status_code == 200  # development and test keep it open


def test_doctor_says_metrics_are_closed_in_production_without_a_token(set_env) -> None:  # type: ignore[no-untyped-def]
    from nurture.delivery.doctor import WARN, check_settings

    set_env(env="production", postal_address=REAL_POSTAL, metrics_token="")
    check = check_settings(get_settings())
    assert check.status == WARN and "403" in check.detail and "NURTURE_METRICS_TOKEN" in check.detail


class Gate:
    """Holds every password check until each of ``total`` attempts has reached one or been answered
    without one. Code that counts an attempt only after checking the password then lets all of them reach
    a check; code that counts first lets only the limit through. No timing involved."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.checked = 0
        self.answered = 0
        self.condition = threading.Condition()

    def check(self) -> None:
        with self.condition:
            self.checked += 1
            self.condition.notify_all()
            # The timeout only guards against a hang if a thread died; the assertions decide.
            self.condition.wait_for(lambda: self.checked + self.answered >= self.total, timeout=60)

    def answered_without_check(self) -> None:
        with self.condition:
            self.answered += 1
            self.condition.notify_all()


@pytest.fixture
def staff_pg(pg_factory) -> sessionmaker[Session]:  # type: ignore[no-untyped-def]
    with transaction(pg_factory) as session:
        staff.create_user(session, "editor@staff.example.com", "editor", PASSWORD)
    return pg_factory


def parallel_logins(
    monkeypatch: pytest.MonkeyPatch, n: int, email: Callable[[int], str], ip: Callable[[int], str]
) -> tuple[list[int], Gate]:
    """``n`` wrong-password sign-ins posted at once; the answers' status codes and the gate."""
    gate = Gate(n)
    real_verify = staff.verify_password

    def gated_verify(password_hash: str, password: str) -> bool:
        gate.check()
        return real_verify(password_hash, password)

    monkeypatch.setattr(staff, "verify_password", gated_verify)
    clients = [app_client(ip(i)).__enter__() for i in range(n)]
    forms = [csrf_of(client) for client in clients]
    barrier = threading.Barrier(n)
    answers: list[int] = []

    def attempt(i: int) -> None:
        barrier.wait()
        data = {"email": email(i), "password": "not the password", "csrf": forms[i], "next": "/admin"}
        status = clients[i].post("/admin/login", data=data).status_code
        answers.append(status)
        if status != 401:
            gate.answered_without_check()

    try:
        run_threads(attempt, n)
    finally:
        for client in clients:
            client.__exit__(None, None, None)
    return answers, gate


def test_parallel_guesses_at_one_account_pass_the_account_limit_at_most_on_postgresql(
    staff_pg, set_env, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    set_env(login_account_limit="3")
    answers, gate = parallel_logins(
        monkeypatch, 10, lambda _: "editor@staff.example.com", lambda i: f"192.0.2.{i + 1}"
    )
    assert sorted(answers) == [401] * 3 + [429] * 7
    assert gate.checked == 3


def test_parallel_guesses_from_one_client_pass_the_ip_limit_at_most_on_postgresql(
    staff_pg, set_env, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    set_env(login_ip_limit="4")
    answers, gate = parallel_logins(
        monkeypatch, 10, lambda i: f"guess{i}@staff.example.com", lambda _: "192.0.2.99"
    )
    assert sorted(answers) == [401] * 4 + [429] * 6
    assert gate.checked == 4


def test_a_successful_sign_in_does_not_use_up_the_allowance(staff_pg, set_env) -> None:  # type: ignore[no-untyped-def]
    """Attempts are counted before the password is checked; a right password gives its count back, so the
    limit stays one of failed sign-ins."""
    set_env(login_account_limit="2")
    with app_client("192.0.2.7") as client:
        for _ in range(5):
            assert login(client, "editor@staff.example.com").status_code == 303
        assert login(client, "editor@staff.example.com", "not the password").status_code == 401
        assert login(client, "editor@staff.example.com").status_code == 303
        assert login(client, "editor@staff.example.com", "not the password").status_code == 401
        assert login(client, "editor@staff.example.com").status_code == 429  # two failures: locked


# --- item 10: ids are ASCII digits, nothing else ------------------------------------------------------------

NOT_IDS = [
    "%C2%B2",  # superscript two: str.isdigit() says yes, int() raises
    "%D9%A1",  # Arabic-Indic one: str.isdigit() says yes, int() reads 1
    "%EF%BC%91",  # fullwidth one
    "+1",
    "%201",
    "1%20",
    "-1",
    "0x1",
    "9" * 19,  # beyond a signed 64-bit integer
    "1" + "0" * 5000,  # beyond what int() parses by default
]
API_ROUTES = [
    ("POST", "/api/v1/users/{}/deactivate"),
    ("POST", "/api/v1/users/{}/role"),
    ("GET", "/api/v1/subscribers/{}"),
    ("POST", "/api/v1/subscribers/{}/resume"),
    ("POST", "/api/v1/users/1/tokens/{}/revoke"),
    ("GET", "/api/v1/webhooks/{}"),
    ("POST", "/api/v1/webhooks/{}/test"),
]
ADMIN_ROUTES = [
    ("GET", "/admin/subscribers/{}"),
    ("POST", "/admin/users/{}/deactivate"),
    ("GET", "/admin/webhooks/{}"),
]


@pytest.fixture
def admin(factory: sessionmaker[Session]) -> Iterator[tuple[TestClient, str]]:
    """A signed-in admin's client (no server exceptions raised: a 500 is an answer here) and API token."""
    with transaction(factory) as session:
        user = staff.create_user(session, "admin@staff.example.com", "admin", PASSWORD)
        token = staff.issue_token(session, user)
    with app_client(raise_server_exceptions=False) as client:
        assert login(client, "admin@staff.example.com").status_code == 303
        yield client, token


def test_ids_that_only_look_like_numbers_are_404_on_every_route(admin, factory) -> None:  # type: ignore[no-untyped-def]
    client, token = admin
    bearer = {"Authorization": f"Bearer {token}"}
    for value in NOT_IDS:
        for method, path in API_ROUTES:
            answer = client.request(method, path.format(value), headers=bearer, json={"role": "viewer"})
            assert answer.status_code == 404, (method, path, value, answer.status_code)
            assert answer.json()["error"]["code"] == "not_found"
        for method, path in ADMIN_ROUTES:
            answer = client.request(method, path.format(value))
            assert answer.status_code == 404, (method, path, value, answer.status_code)
    with transaction(factory) as session:  # "١" did not reach user 1
        assert session.scalars(select(StaffUser.active)).all() == [True]


def test_a_token_id_in_a_form_that_only_looks_like_a_number_is_refused(admin) -> None:  # type: ignore[no-untyped-def]
    client, _ = admin
    form = csrf_of(client, "/admin/users")
    for value in ("²", "١", "+1", " 1", "9" * 19):
        answer = client.post("/admin/users/1/revoke", data={"csrf": form, "token_id": value})
        assert answer.status_code == 400 and "no such token" in answer.text, (value, answer.status_code)


def test_the_sample_webhook_verifier_refuses_timestamps_that_only_look_like_numbers() -> None:
    """nurture/webhooks/verify.py is copied into receivers (standard library only), so it keeps its own
    check; a bad header must be InvalidWebhook (a 400), never a crash."""
    from nurture.webhooks.verify import InvalidWebhook, verify

    for stamp in ("²", "١٧٠٠٠٠٠٠٠٠", "+1700000000", " 1700000000", "9" * 5000):
        headers = {"webhook-id": "msg_1", "webhook-timestamp": stamp, "webhook-signature": "v1,AAAA"}
        with pytest.raises(InvalidWebhook, match="bad timestamp"):
            verify(b"{}", headers, "whsec_c2VjcmV0", now=1_700_000_000)


def test_the_strict_parser_takes_ascii_digits_only() -> None:
    from nurture.core.ids import parse_id

    assert [parse_id(v) for v in ("0", "7", "007", "9" * 18)] == [0, 7, 7, int("9" * 18)]
    for value in ("", "²", "١", "１", "+1", " 1", "1 ", "1\n", "-1", "1.0", "1_000", "9" * 19, None, 7):
        assert parse_id(value) is None, repr(value)


# --- item 13: an unset NURTURE_ENV is not development; tokens stay out of logs ------------------------------


def test_an_unset_environment_gets_production_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NURTURE_ENV")
    monkeypatch.delenv("NURTURE_SECRET_KEY")
    get_settings.cache_clear()
    with pytest.raises(ConfigError) as refused:
        get_settings()
    message = str(refused.value)
    assert "NURTURE_SECRET_KEY" in message and "NURTURE_ENV=development" in message
    monkeypatch.setenv("NURTURE_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("NURTURE_POSTAL_ADDRESS", REAL_POSTAL)
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.env is Environment.production and settings.env is not Environment.development
    get_settings.cache_clear()


def test_an_unset_environment_sets_secure_cookies(sqlite_url, set_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    set_env(database_url=sqlite_url, postal_address=REAL_POSTAL)
    monkeypatch.delenv("NURTURE_ENV")
    get_settings.cache_clear()
    cookie = app_client().get("/admin/login").headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_link_tokens_never_reach_the_web_log(sqlite_url, processes: Processes, log_format: str) -> None:
    import urllib.error
    import urllib.request

    secret_paths = {
        "unsubscribe": tokens.make_token(tokens.Purpose.unsubscribe, "public-id-of-someone"),
        "confirm": tokens.make_token(tokens.Purpose.confirm, "signup-of-someone"),
        "preferences": tokens.make_token(tokens.Purpose.preferences, "public-id-of-someone"),
        "l": "AbCdEfGhIjKlMnOpQrStUv",
        "o": "ZyXwVuTsRqPoNmLkJiHgFe",
    }
    port = free_port()
    env = {"NURTURE_DATABASE_URL": sqlite_url, "NURTURE_LOG_FORMAT": log_format}
    assert processes.start("migrate", ["db", "upgrade"], env).wait(timeout=60) == 0
    processes.start("web", ["web", "--port", str(port)], env)

    def get(path: str) -> int | None:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status
        except urllib.error.HTTPError as answer:
            return answer.code
        except OSError:
            return None

    wait_until(lambda: get("/healthz"), 60, "the web app to answer")
    for kind, token in secret_paths.items():
        assert get(f"/{kind}/{token}?from=mail") is not None
    log_path = processes.log_dir / "web.log"

    def access_lines() -> list[str]:
        lines = log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if "uvicorn.access" in line and re.search(r"/(l|o)/", line)]

    wait_until(lambda: len(access_lines()) >= 2, 30, "the access lines of the link requests")
    text = log_path.read_text(errors="replace")
    for kind, token in secret_paths.items():
        assert token not in text and token.split(".")[0] not in text, kind
        assert f"/{kind}/[token]" in text, kind
