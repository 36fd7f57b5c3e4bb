"""Signed, purpose-scoped tokens for links in emails.

A token names a subscriber by their random ``public_id`` (never the email address) and is signed with a
salt per purpose, so a confirm token cannot unsubscribe and the reverse. Unsubscribe and preferences tokens do
not expire: a link in an old email must keep working (RFC 8058, Gmail and Yahoo bulk-sender rules).
Confirm tokens name one signup (a consent record's random ``public_id``) rather than the subscriber, so
confirming applies exactly that signup's choices.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from contextvars import ContextVar
from enum import StrEnum

from itsdangerous import BadSignature, SignatureExpired, Signer, TimestampSigner, URLSafeTimedSerializer

from nurture.core.config import Settings, get_settings


class Purpose(StrEnum):
    confirm = "confirm"
    unsubscribe = "unsubscribe"
    preferences = "preferences"


# Seconds a token stays valid; None: forever.
MAX_AGE: dict[Purpose, int | None] = {
    Purpose.confirm: 7 * 24 * 3600,
    Purpose.unsubscribe: None,
    Purpose.preferences: None,
}


class InvalidToken(Exception):
    """Tampered, foreign, expired or malformed: callers answer all of these the same way."""


# A token carries the second it was signed in, so two renders of one email a second boundary apart differ.
# Code that compares two renders byte for byte (the send path's plan check) pins the second for both.
_PINNED_SECOND: ContextVar[int | None] = ContextVar("nurture_tokens_pinned_second", default=None)


class _PinnableTimestampSigner(TimestampSigner):
    def get_timestamp(self) -> int:
        pinned = _PINNED_SECOND.get()
        return int(time.time()) if pinned is None else pinned


@contextlib.contextmanager
def signed_in_one_second() -> Iterator[None]:
    """Every token made inside carries the same signing second (the one this block began in)."""
    reset = _PINNED_SECOND.set(int(time.time()))
    try:
        yield
    finally:
        _PINNED_SECOND.reset(reset)


def _serializer(purpose: Purpose, settings: Settings) -> URLSafeTimedSerializer:
    return _serializer_for(purpose, tuple(settings.verification_secret_keys))


@functools.lru_cache(maxsize=64)
def _serializer_for(purpose: Purpose, keys: tuple[str, ...]) -> URLSafeTimedSerializer:
    # Signs with the current key; also verifies with NURTURE_OLD_SECRET_KEYS, so links in mail sent before a
    # key rotation keep working. Cached per key set: every email makes two links, and building one is slow.
    return URLSafeTimedSerializer(
        list(keys), salt=f"nurture.{purpose.value}", signer=_PinnableTimestampSigner
    )


def make_token(purpose: Purpose, public_id: str, settings: Settings | None = None) -> str:
    # The serializer's own dumps, less building a signer for every token (a third of its cost; every email
    # makes two tokens).
    keys = tuple((settings or get_settings()).verification_secret_keys)
    serializer = _serializer_for(purpose, keys)
    return _signer_for(purpose, keys).sign(serializer.dump_payload(public_id)).decode("ascii")


@functools.lru_cache(maxsize=64)
def _signer_for(purpose: Purpose, keys: tuple[str, ...]) -> Signer:
    return _serializer_for(purpose, keys).make_signer()


def read_token(purpose: Purpose, token: str, settings: Settings | None = None) -> str:
    """The subscriber ``public_id`` inside a valid token, else :class:`InvalidToken`."""
    if not token or len(token) > 512 or not token.isascii():
        # Non-ASCII (lone surrogates included) can never be ours, and would not even encode for the check.
        raise InvalidToken("malformed")
    try:
        value = _serializer(purpose, settings or get_settings()).loads(token, max_age=MAX_AGE[purpose])
    except SignatureExpired as exc:
        raise InvalidToken("expired") from exc
    except BadSignature as exc:
        raise InvalidToken("bad signature") from exc
    if not isinstance(value, str):
        raise InvalidToken("malformed")
    return value


def link(purpose: Purpose, public_id: str, settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return f"{settings.web.base_url}/{purpose.value}/{make_token(purpose, public_id, settings)}"
