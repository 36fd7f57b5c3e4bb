"""Link tokens: make_token writes exactly what itsdangerous' own dumps writes, and reads back."""

from __future__ import annotations

import pytest

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
