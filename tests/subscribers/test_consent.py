"""Consent wording is versioned and released versions never change; GET never changes state anywhere."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient
from sqlalchemy import select

from nurture.core import tokens
from nurture.core.db import transaction
from nurture.models import Subscriber
from nurture.subscribers import consent
from tests.support.web import confirm_url, drain, path_of, snapshot

# Add a line here when a version is released; never edit one (the ledger points at these words).
RELEASED = {"2026-11-v1": "a83b05436d1ba67584e0e0db247784adab6d6f019ba200836753284a3430fc77"}


def test_released_consent_wording_never_changes() -> None:
    assert consent.CURRENT in consent.VERSIONS
    for version, digest in RELEASED.items():
        assert hashlib.sha256(consent.VERSIONS[version].encode()).hexdigest() == digest, version
    assert set(consent.VERSIONS) == set(RELEASED), "a new version needs its digest pinned above"


def test_text_is_filled_with_the_organisation_name() -> None:
    text = consent.text_of(consent.CURRENT, "Clinic X")
    assert "Clinic X" in text and "{" not in text


def test_every_get_leaves_the_database_untouched(prospect_client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    prospect_client.post("/subscribe", json={"email": "ana@example.com", "consent": True})
    confirm = path_of(confirm_url(drain(app_factory)[1][0]))
    with transaction(app_factory) as session:
        public_id = session.scalar(select(Subscriber.public_id))
    paths = [
        "/subscribe",
        "/subscribe?sequence=other",
        "/subscribe/embed",
        "/subscribe/check-your-inbox",
        confirm,
        f"/unsubscribe/{tokens.make_token(tokens.Purpose.unsubscribe, public_id)}",
        f"/preferences/{tokens.make_token(tokens.Purpose.preferences, public_id)}",
        f"/preferences/{tokens.make_token(tokens.Purpose.preferences, public_id)}?done=leave-all",
    ]
    before = snapshot(app_factory)
    for path in paths:
        answer = prospect_client.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["referrer-policy"] == "no-referrer", path
        assert '<meta name="viewport"' in answer.text and '<html lang="en">' in answer.text, path
    assert snapshot(app_factory) == before
