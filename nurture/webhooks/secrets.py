"""Endpoint signing secrets: made here, stored encrypted at rest, read back only to sign.

A secret must be readable to sign with, so it cannot be hashed like an API token. It is encrypted with
Fernet under a key derived from NURTURE_SECRET_KEY: a leaked database dump or backup alone does not reveal
it. NURTURE_OLD_SECRET_KEYS still decrypt, so rotating the app's secret key does not break endpoints.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from nurture.core.config import Settings

PREFIX = "whsec_"


def generate() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def key_bytes(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret stands for."""
    return base64.b64decode(secret.removeprefix(PREFIX))


def _fernet(settings: Settings) -> MultiFernet:
    keys = list(reversed(settings.verification_secret_keys))  # current key first: it encrypts
    return MultiFernet(
        [
            Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"nurture.webhook-secret:" + k.encode()).digest()))
            for k in keys
        ]
    )


def seal(secret: str, settings: Settings) -> str:
    return _fernet(settings).encrypt(secret.encode()).decode()


def unseal(sealed: str, settings: Settings) -> str:
    try:
        return _fernet(settings).decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise RuntimeError(
            "a webhook secret cannot be decrypted: NURTURE_SECRET_KEY changed without the old key in "
            "NURTURE_OLD_SECRET_KEYS; rotate the endpoint's secret"
        ) from None
