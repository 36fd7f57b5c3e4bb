"""Which internal events are published, under which public name, with which payload."""

from __future__ import annotations

import json
from typing import Any

# Internal event kind (nurture/models/events.py callers) -> public event type. Anything not listed is never
# sent.
PUBLIC_TYPES: dict[str, str] = {
    "subscribed": "subscribed",  # added directly by staff (consent vouched for)
    "confirmed": "confirmed",  # double opt-in confirmed: the usual way someone becomes active
    "sent": "delivered",  # an email of a sequence was accepted by the mail server
    "failed": "delivery_failed",  # an email could not be delivered (permanent failure)
    "bounced": "bounced",  # a hard bounce: the address is now suppressed
    "unsubscribed": "unsubscribed",
    "resubscribed": "resubscribed",
    "goal_met": "goal_met",
    "enrollment_completed": "enrollment_completed",
    "enrollment_exited": "enrollment_exited",
    "clicked": "clicked",
    "opened": "opened",
}
EVENT_TYPES: tuple[str, ...] = tuple(dict.fromkeys(PUBLIC_TYPES.values()))
TEST_TYPE = "test"  # the "send test event" button; never from the event log

# Event detail keys that may leave the system. Everything else stays in: error texts can quote mail servers
# and addresses, and request details (IP, user agent) are nobody else's business.
SAFE_DETAIL_KEYS = frozenset(
    {
        "sequence",
        "version",
        "step_key",
        "goal",
        "reason",
        "source",
        "url",
        "enrollment_id",
        "cancelled",
        "message_id",
    }
)


def public_detail(detail: dict[str, Any] | None) -> dict[str, Any]:
    return {
        key: value
        for key, value in (detail or {}).items()
        if key in SAFE_DETAIL_KEYS and (value is None or isinstance(value, str | int | float | bool))
    }


def envelope(event_type: str, occurred_at: str, data: dict[str, Any]) -> str:
    """The exact body bytes (as text) of one delivery: Standard Webhooks' {type, timestamp, data}."""
    return json.dumps(
        {"type": event_type, "timestamp": occurred_at, "data": data},
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )
