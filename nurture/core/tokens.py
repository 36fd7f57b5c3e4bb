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
import hmac
import json
import time
import zlib
from collections.abc import Iterator
from contextvars import ContextVar
from enum import StrEnum

from itsdangerous import BadSignature, SignatureExpired, Signer, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes

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


def _signing_second() -> int:
    pinned = _PINNED_SECOND.get()
    return int(time.time()) if pinned is None else pinned


class _PinnableTimestampSigner(TimestampSigner):
    def get_timestamp(self) -> int:
        return _signing_second()


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
    """Exactly what the serializer's ``dumps`` writes (tests/core/test_tokens.py compares the two), in half
    its time: every email makes two tokens, and itsdangerous derives the key, builds its HMAC object and
    encodes through several layers for each. The payload, compressed only where that is shorter, the
    timestamp and the signature are its format; only the work is done once where it can be."""
    key = _signing_key(purpose, tuple((settings or get_settings()).verification_secret_keys))
    data = json.dumps(public_id, ensure_ascii=False, separators=(",", ":")).encode()
    packed = zlib.compress(data)
    payload = b"." + base64_encode(packed) if len(packed) < len(data) - 1 else base64_encode(data)
    value = payload + b"." + base64_encode(int_to_bytes(_signing_second()))
    return (value + b"." + base64_encode(hmac.digest(key, value, "sha1"))).decode("ascii")


@functools.lru_cache(maxsize=64)
def _signing_key(purpose: Purpose, keys: tuple[str, ...]) -> bytes:
    """The current key, as the serializer's signer derives it (django-concat and SHA-1, its defaults)."""
    signer = _serializer_for(purpose, keys).make_signer()
    defaults = (signer.key_derivation, signer.sep, signer.digest_method)
    if defaults != ("django-concat", b".", Signer.default_digest_method):
        raise RuntimeError(f"itsdangerous' signer changed its defaults to {defaults}: see make_token")
    return signer.derive_key()


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
