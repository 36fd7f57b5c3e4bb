"""Property-based fuzzing of every public route: never a 5xx, never a partial write.

"Partial write" is checked as an invariant of the whole database after every request: each signup is a
subscriber (at most one per address) + a consent record + an outbox row, all or none; a refused request
changes no row at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from nurture.core import tokens
from nurture.core.db import transaction
from nurture.models import ConsentRecord, OutboxMessage, Subscriber
from tests.support.public import make_client
from tests.support.web import row_counts

FUZZ = settings(
    max_examples=75,  # per database: 150 per route in all
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FIELDS = ["email", "first_name", "timezone", "consent", "sequence", "consent_version", "source", "website"]
CONTENT_TYPES = [
    "application/x-www-form-urlencoded",
    "application/json",
    "application/x-www-form-urlencoded; charset=utf-8",
    "application/json; charset=latin-1",
    "multipart/form-data; boundary=x",
    "text/plain",
    "",
]
# Interesting text: control characters, separators, surrogates (JSON can carry them), long runs.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "a@example.com",
            "a@b.com\r\nBcc: x@y.com",
            "=?utf-8?q?=0D=0A?=",
            "Europe/Paris",
            "../../etc/passwd",
            "yes",
            "two-step",
            "\u2028",
            "\x00",
            "\ud800",
            "A" * 300,
            "",
        ]
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | nasty_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
field_names = st.one_of(st.sampled_from(FIELDS), st.text(max_size=10))


def _invariants(factory) -> None:  # type: ignore[no-untyped-def]
    signups = (
        select(func.count())
        .select_from(ConsentRecord)
        .where(ConsentRecord.source != "resubscribe")
        .scalar_subquery()
    )
    messages = select(func.count()).select_from(OutboxMessage).scalar_subquery()
    orphans = (
        select(func.count())
        .select_from(Subscriber)
        .where(~select(ConsentRecord.id).where(ConsentRecord.subscriber_id == Subscriber.id).exists())
        .scalar_subquery()
    )
    with transaction(factory) as session:
        signup_count, message_count, orphan_count = session.execute(select(signups, messages, orphans)).one()
    assert signup_count == message_count and orphan_count == 0


def _check(factory, before: dict[str, int], status: int) -> None:  # type: ignore[no-untyped-def]
    assert status < 500
    after = row_counts(factory)
    if status >= 400:
        assert after == before  # refused: nothing at all
    _invariants(factory)


@pytest.fixture
def fuzz_client(app_factory, set_env: Callable[..., None]):  # type: ignore[no-untyped-def]
    set_env(signup_ip_limit="100000", confirm_daily_limit="100")
    with make_client() as client:
        yield client


def test_subscribe_with_fuzzed_json(fuzz_client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    @FUZZ
    @given(st.dictionaries(field_names, json_values, max_size=8) | json_values)
    def run(body: Any) -> None:
        before = row_counts(app_factory)
        # ensure_ascii writes lone surrogates as \\ud800 escapes: valid JSON, invalid text.
        answer = fuzz_client.post(
            "/subscribe", content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        _check(app_factory, before, answer.status_code)
        if answer.status_code == 202:
            after = row_counts(app_factory)
            assert after["consent_records"] - before["consent_records"] in (0, 1)  # 0: the honeypot

    run()


def test_subscribe_with_fuzzed_forms_and_bytes(fuzz_client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    form = st.dictionaries(field_names, nasty_text.filter(lambda s: "\ud800" not in s), max_size=8).map(
        lambda d: urlencode(d).encode()
    )

    @FUZZ
    @given(form | st.binary(max_size=300), st.sampled_from(CONTENT_TYPES))
    def run(body: bytes, content_type: str) -> None:
        before = row_counts(app_factory)
        headers = {"Content-Type": content_type} if content_type else {}
        answer = fuzz_client.post("/subscribe", content=body, headers=headers, follow_redirects=False)
        _check(app_factory, before, answer.status_code)

    run()


def _valid_tokens(client: TestClient, factory) -> list[str]:  # type: ignore[no-untyped-def]
    client.post("/subscribe", json={"email": "fuzz@example.com", "consent": True})
    with transaction(factory) as session:
        subscriber_id = session.scalar(select(Subscriber.public_id))
        signup_id = session.scalar(select(ConsentRecord.public_id))
    return [
        tokens.make_token(tokens.Purpose.confirm, signup_id),
        tokens.make_token(tokens.Purpose.unsubscribe, subscriber_id),
        tokens.make_token(tokens.Purpose.preferences, subscriber_id),
    ]


def test_link_targets_with_fuzzed_tokens(fuzz_client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    valid = _valid_tokens(fuzz_client, app_factory)

    def mutate(args: tuple[str, int, str]) -> str:
        token, position, replacement = args
        position %= len(token)
        return token[:position] + replacement + token[position + 1 :]

    mutated = st.tuples(st.sampled_from(valid), st.integers(0, 200), st.text(max_size=2)).map(mutate)

    @FUZZ
    @given(
        st.sampled_from(["confirm", "unsubscribe", "preferences"]),
        st.sampled_from(["get", "post"]),
        st.one_of(st.text(min_size=1, max_size=60), mutated, st.sampled_from(valid)),
    )
    def run(route: str, method: str, token: str) -> None:
        before = row_counts(app_factory)
        path = f"/{route}/{quote(token, safe='')}"
        answer = getattr(fuzz_client, method)(path, follow_redirects=False)
        assert answer.status_code < 500
        if method == "get" or answer.status_code >= 400:
            assert row_counts(app_factory) == before
        _invariants(app_factory)

    run()


def test_preferences_with_fuzzed_fields(fuzz_client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    path = f"/preferences/{_valid_tokens(fuzz_client, app_factory)[2]}"
    actions = st.sampled_from(["update", "pause", "resume", "leave", "leave-all", "resubscribe", "x"])
    fields = st.fixed_dictionaries(
        {"action": actions | nasty_text},
        optional={
            "first_name": nasty_text,
            "timezone": nasty_text,
            "days": st.sampled_from(["7", "14", "30", "90", "0", "-1", "99999999999999999999"]) | nasty_text,
            "sequence": st.sampled_from(["two-step", "other"]) | nasty_text,
            "consent_version": nasty_text,
        },
    )

    @FUZZ
    @given(fields, st.booleans())
    def run(data: dict[str, str], as_json: bool) -> None:
        before = row_counts(app_factory)
        if as_json:
            answer = fuzz_client.post(
                path, content=json.dumps(data), headers={"Content-Type": "application/json"}
            )
        else:
            body = urlencode({k: v for k, v in data.items() if "\ud800" not in v}).encode()
            answer = fuzz_client.post(
                path,
                content=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                follow_redirects=False,
            )
        _check(app_factory, before, answer.status_code)

    run()
