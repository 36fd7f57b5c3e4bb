"""Link tokens: make_token writes exactly what itsdangerous' own dumps writes, and reads back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.core import tokens
from nurture.core.config import get_settings


@pytest.mark.parametrize("purpose", list(tokens.Purpose))
def test_a_token_is_the_serializers_own_and_reads_back(purpose: tokens.Purpose) -> None:
    public_id = "Xy3_public-id-0123456789"
    settings = get_settings()
    made = tokens.make_token(purpose, public_id, settings)
    serializer = tokens._serializer_for(purpose, tuple(settings.verification_secret_keys))
    with tokens.signed_in_one_second():  # same second, same bytes: the token carries its signing time
        assert tokens.make_token(purpose, public_id, settings) == serializer.dumps(public_id)
    assert tokens.read_token(purpose, made, settings) == public_id


def test_tokens_made_in_one_pinned_block_carry_one_second_however_long_it_lasts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1_800_000_000.2]
    monkeypatch.setattr(tokens, "time", type("Clock", (), {"time": staticmethod(lambda: now[0])}))
    with tokens.signed_in_one_second():
        first = tokens.make_token(tokens.Purpose.unsubscribe, "p1")
        now[0] += 5  # seconds pass inside the block: the pin holds
        assert tokens.make_token(tokens.Purpose.unsubscribe, "p1") == first
    assert tokens.make_token(tokens.Purpose.unsubscribe, "p1") != first  # and it ends with the block
    assert tokens.read_token(tokens.Purpose.unsubscribe, first) == "p1"


@settings(max_examples=300, deadline=None)
@given(
    public_id=st.one_of(
        st.text(st.characters(exclude_categories=("Cs",)), max_size=80),  # what UTF-8 can carry
        st.text(alphabet="ab", min_size=30, max_size=200),  # compresses: the payload's "." form
        st.from_regex(r"[A-Za-z0-9_-]{22}", fullmatch=True),  # what new_public_id makes
    ),
    purpose=st.sampled_from(list(tokens.Purpose)),
)
def test_make_token_writes_what_itsdangerous_writes_for_any_id(
    public_id: str, purpose: tokens.Purpose
) -> None:
    settings = get_settings()
    serializer = tokens._serializer_for(purpose, tuple(settings.verification_secret_keys))
    with tokens.signed_in_one_second():
        assert tokens.make_token(purpose, public_id, settings) == serializer.dumps(public_id)
