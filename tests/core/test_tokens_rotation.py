"""Rotating NURTURE_SECRET_KEY keeps links in mail already sent working while the old key is listed in
NURTURE_OLD_SECRET_KEYS; new links are signed with the new key only."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from nurture.core import tokens
from nurture.core.config import ConfigError, get_settings
from nurture.core.db import transaction
from nurture.models import Subscriber
from nurture.web.app import create_app
from tests.conftest import TEST_SECRET
from tests.support.helpers import statuses, subscribe, sync_sequences

NEW_SECRET = "rotated-secret-key-for-nurture-tests-9876543210"


def test_old_links_verify_only_while_their_key_is_listed(set_env) -> None:  # type: ignore[no-untyped-def]
    old_link = tokens.make_token(tokens.Purpose.unsubscribe, "subscriber-1")  # signed with TEST_SECRET

    set_env(secret_key=NEW_SECRET, old_secret_keys=f"another-old-key-that-is-long-enough-000, {TEST_SECRET}")
    assert tokens.read_token(tokens.Purpose.unsubscribe, old_link) == "subscriber-1"
    new_link = tokens.make_token(tokens.Purpose.unsubscribe, "subscriber-1")
    assert new_link != old_link

    set_env(old_secret_keys="")  # the old key retired: its links stop working, new ones keep working
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(tokens.Purpose.unsubscribe, old_link)
    assert tokens.read_token(tokens.Purpose.unsubscribe, new_link) == "subscriber-1"

    set_env(secret_key=TEST_SECRET, old_secret_keys="")  # signed with the new key, not the old one
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(tokens.Purpose.unsubscribe, new_link)


def test_an_unsubscribe_link_from_before_the_rotation_still_unsubscribes(
    factory, three_step, set_env
) -> None:  # type: ignore[no-untyped-def]
    sync_sequences(factory)
    subscribe(factory, "ana@example.org", "three-step")
    with transaction(factory) as session:
        public_id = session.scalar(select(Subscriber.public_id).where(Subscriber.email == "ana@example.org"))
    old_link = tokens.make_token(tokens.Purpose.unsubscribe, public_id)

    set_env(secret_key=NEW_SECRET, old_secret_keys=TEST_SECRET)
    answer = TestClient(create_app()).post(f"/unsubscribe/{old_link}", content="List-Unsubscribe=One-Click")
    assert answer.status_code == 200
    assert statuses(factory) == ["cancelled"] * 3


def test_a_placeholder_among_the_old_keys_is_refused_outside_development(set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(old_secret_keys="changeme")
    with pytest.raises(ConfigError, match="NURTURE_OLD_SECRET_KEYS"):
        get_settings()
