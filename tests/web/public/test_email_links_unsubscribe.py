"""Health checks and the unsubscribe link target, including RFC 8058 one-click POSTs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from nurture.core import tokens
from nurture.core.db import transaction
from nurture.models import Subscriber
from nurture.web.app import create_app
from tests.support.helpers import statuses, subscribe, sync_sequences


@pytest.fixture
def client(factory, three_step):  # type: ignore[no-untyped-def]
    sync_sequences(factory)
    with TestClient(create_app()) as test_client:
        yield test_client


def _unsubscribe_token(factory, email: str) -> str:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == email))
        return tokens.make_token(tokens.Purpose.unsubscribe, subscriber.public_id)


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "broker": "ok",
    }


def test_get_shows_a_button_and_changes_nothing(client, factory) -> None:  # type: ignore[no-untyped-def]
    subscribe(factory, "a@example.com", "three-step")
    page = client.get(f"/unsubscribe/{_unsubscribe_token(factory, 'a@example.com')}")
    assert page.status_code == 200 and "<button" in page.text and 'method="post"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert statuses(factory) == ["pending"] * 3


def test_one_click_post_unsubscribes_and_cancels_everything_pending(client, factory) -> None:  # type: ignore[no-untyped-def]
    subscribe(factory, "a@example.com", "three-step")
    subscribe(factory, "b@example.com", "three-step")
    token = _unsubscribe_token(factory, "a@example.com")
    client.cookies.clear()
    answer = client.post(
        f"/unsubscribe/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert answer.status_code == 200 and "unsubscribed" in answer.text
    assert statuses(factory) == ["cancelled"] * 3 + ["pending"] * 3
    again = client.post(f"/unsubscribe/{token}", content="List-Unsubscribe=One-Click", follow_redirects=False)
    assert again.status_code == 200  # repeating is harmless
    with transaction(factory) as session:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == "a@example.com"))
        assert subscriber.status == "unsubscribed" and subscriber.unsubscribed_at is not None


@pytest.mark.parametrize("method", ["get", "post"])
def test_tampered_or_foreign_tokens_get_the_same_friendly_page(client, factory, method: str) -> None:  # type: ignore[no-untyped-def]
    subscribe(factory, "a@example.com", "three-step")
    good = _unsubscribe_token(factory, "a@example.com")
    with transaction(factory) as session:
        public_id = session.scalar(select(Subscriber.public_id))
    confirm_token = tokens.make_token(tokens.Purpose.confirm, public_id)  # right subscriber, wrong purpose
    for token in (good[:-2] + "xx", confirm_token, "garbage", "a" * 600):
        answer = getattr(client, method)(f"/unsubscribe/{token}")
        assert answer.status_code == 404 and "This link is not valid" in answer.text
    assert statuses(factory) == ["pending"] * 3
