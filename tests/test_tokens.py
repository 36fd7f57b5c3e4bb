"""Link tokens: make_token writes exactly what itsdangerous' own dumps writes, and reads back."""

from __future__ import annotations

import pytest

from nurture import tokens
from nurture.config import get_settings


@pytest.mark.parametrize("purpose", list(tokens.Purpose))
def test_a_token_is_the_serializers_own_and_reads_back(purpose: tokens.Purpose) -> None:
    public_id = "Xy3_public-id-0123456789"
    settings = get_settings()
    made = tokens.make_token(purpose, public_id, settings)
    serializer = tokens._serializer_for(purpose, tuple(settings.verification_secret_keys))
    # Same second, same bytes (the token carries a timestamp); compared twice in case a second turned.
    assert made == serializer.dumps(public_id) or tokens.make_token(purpose, public_id) == serializer.dumps(
        public_id
    )
    assert tokens.read_token(purpose, made, settings) == public_id
