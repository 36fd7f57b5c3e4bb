"""Standard Webhooks signatures (https://www.standardwebhooks.com/), sender side.

``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``; during a secret rotation
it carries one such entry per valid secret, space-separated, and a receiver accepts any that matches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from nurture.webhooks.secrets import key_bytes


def signature(secret: str, message_id: str, timestamp: int, body: str) -> str:
    signed = f"{message_id}.{timestamp}.{body}".encode()
    return "v1," + base64.b64encode(hmac.new(key_bytes(secret), signed, hashlib.sha256).digest()).decode()


def headers(secrets: list[str], message_id: str, timestamp: int, body: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "nurture-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, message_id, timestamp, body) for s in secrets),
    }
