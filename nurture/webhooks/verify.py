"""Sample receiver: verify a nurture webhook with the standard library only (docs/webhooks.md quotes it).

Copy this function into the service that receives webhooks. Pass the raw request body (bytes, before any
JSON parsing), the request headers and your endpoint's ``whsec_...`` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

TOLERANCE_SECONDS = 5 * 60


class InvalidWebhook(Exception):
    """The request did not come from nurture, was altered, or is a replay: answer 400 and ignore it."""


def verify(body: bytes, headers: Mapping[str, str], secret: str, now: float | None = None) -> None:
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"]
    except KeyError as missing:
        raise InvalidWebhook(f"missing header {missing}") from None
    # ASCII digits only, and few: str.isdigit() also accepts "²" (int() then raises) and "١" (read as 1).
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise InvalidWebhook("bad timestamp")
    # A captured request replayed later carries its old timestamp, and the signature covers it.
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_SECONDS:
        raise InvalidWebhook("timestamp too old or too far in the future")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = message_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):  # constant time
            return
    raise InvalidWebhook("no valid signature")
