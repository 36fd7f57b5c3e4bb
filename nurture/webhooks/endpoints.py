"""Staff operations on endpoints and deliveries, shared by the admin UI, the API and the CLI.

Each change is audited in the transaction that makes it. Input problems raise :class:`WebhookError` with a
message fit to show to the person who typed it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.core.config import Settings
from nurture.core.ids import parse_id
from nurture.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from nurture.staff import accounts
from nurture.staff.accounts import Actor
from nurture.webhooks import secrets as endpoint_secrets
from nurture.webhooks.event_types import EVENT_TYPES, TEST_TYPE, envelope
from nurture.webhooks.fanout import new_message_id
from nurture.webhooks.urls import UnsafeUrl, validate_url

MAX_DESCRIPTION = 500
RECENT = timedelta(hours=24)


class WebhookError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # "invalid" or "not_found"
        self.message = message


def clean_event_types(raw: Any) -> list[str]:
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
        raise WebhookError("invalid", "choose at least one event type: " + ", ".join(EVENT_TYPES))
    unknown = [t for t in raw if t not in EVENT_TYPES]
    if unknown:
        raise WebhookError("invalid", f"unknown event type {unknown[0]!r}; known: " + ", ".join(EVENT_TYPES))
    return [t for t in EVENT_TYPES if t in raw]  # canonical order, no repeats


def clean_description(raw: Any) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str) or len(raw.strip()) > MAX_DESCRIPTION:
        raise WebhookError("invalid", f"the description must be text of at most {MAX_DESCRIPTION} characters")
    return raw.strip()


def checked_url(raw: Any, settings: Settings) -> str:
    if not isinstance(raw, str):
        raise WebhookError("invalid", "give the endpoint URL")
    try:
        return validate_url(raw, settings)
    except UnsafeUrl as exc:
        raise WebhookError("invalid", str(exc)) from None


def snapshot(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "url": endpoint.url,
        "event_types": list(endpoint.event_types or []),
        "description": endpoint.description,
        "enabled": endpoint.enabled,
    }


def get(session: Session, endpoint_id: int | str, *, lock: bool = False) -> WebhookEndpoint:
    if isinstance(endpoint_id, str):
        parsed = parse_id(endpoint_id)
        if parsed is None:
            raise WebhookError("not_found", "no such webhook endpoint")
        endpoint_id = parsed
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    endpoint = session.scalar(query.with_for_update() if lock else query)
    if endpoint is None:
        raise WebhookError("not_found", "no such webhook endpoint")
    return endpoint


def create(
    session: Session,
    settings: Settings,
    actor: Actor | None,
    *,
    url: Any,
    event_types: Any,
    description: Any = None,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret, which the caller shows once."""
    endpoint = WebhookEndpoint(
        url=checked_url(url, settings),
        event_types=clean_event_types(event_types),
        description=clean_description(description),
        enabled=True,
        consecutive_failures=0,
        created_by=actor.email if actor else "cli",
        created_at=clock.now(),
    )
    secret = endpoint_secrets.generate()
    endpoint.secret = endpoint_secrets.seal(secret, settings)
    session.add(endpoint)
    session.flush()
    accounts.audit(session, actor, "webhook.create", f"webhook:{endpoint.id}", None, snapshot(endpoint))
    return endpoint, secret


def update(
    session: Session, settings: Settings, actor: Actor | None, endpoint_id: int | str, fields: dict[str, Any]
) -> WebhookEndpoint:
    endpoint = get(session, endpoint_id, lock=True)
    before = snapshot(endpoint)
    if "url" in fields:
        endpoint.url = checked_url(fields["url"], settings)
    if "event_types" in fields:
        endpoint.event_types = clean_event_types(fields["event_types"])
    if "description" in fields:
        endpoint.description = clean_description(fields["description"])
    if "enabled" in fields:
        if not isinstance(fields["enabled"], bool):
            raise WebhookError("invalid", "enabled must be true or false")
        _set_enabled(endpoint, fields["enabled"])
    accounts.audit(session, actor, "webhook.update", f"webhook:{endpoint.id}", before, snapshot(endpoint))
    return endpoint


def _set_enabled(endpoint: WebhookEndpoint, enabled: bool) -> None:
    if enabled and not endpoint.enabled:
        # A fresh start: the failures that disabled it are history, and what waited goes out now.
        endpoint.consecutive_failures = 0
        endpoint.failing_since = None
        endpoint.disabled_at = None
        endpoint.disabled_reason = None
    elif not enabled and endpoint.enabled:
        endpoint.disabled_at = clock.now()
        endpoint.disabled_reason = "by staff"
    endpoint.enabled = enabled


def set_enabled(
    session: Session, actor: Actor | None, endpoint_id: int | str, enabled: bool
) -> WebhookEndpoint:
    endpoint = get(session, endpoint_id, lock=True)
    before = snapshot(endpoint)
    _set_enabled(endpoint, enabled)
    action = "webhook.enable" if enabled else "webhook.disable"
    accounts.audit(session, actor, action, f"webhook:{endpoint.id}", before, snapshot(endpoint))
    return endpoint


def rotate_secret(
    session: Session, settings: Settings, actor: Actor | None, endpoint_id: int | str
) -> tuple[WebhookEndpoint, str]:
    """A new secret; the old one keeps signing (a second signature) for the grace period."""
    endpoint = get(session, endpoint_id, lock=True)
    secret = endpoint_secrets.generate()
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_until = clock.now() + timedelta(
        hours=settings.webhooks.webhook_secret_grace_hours
    )
    endpoint.secret = endpoint_secrets.seal(secret, settings)
    accounts.audit(
        session,
        actor,
        "webhook.rotate_secret",
        f"webhook:{endpoint.id}",
        None,
        {"previous_valid_until": endpoint.previous_secret_until.isoformat()},
    )
    return endpoint, secret


def delete(session: Session, actor: Actor | None, endpoint_id: int | str) -> None:
    endpoint = get(session, endpoint_id, lock=True)
    accounts.audit(session, actor, "webhook.delete", f"webhook:{endpoint.id}", snapshot(endpoint), None)
    session.delete(endpoint)  # deliveries and attempts go with it (ON DELETE CASCADE)
    session.flush()


def queue_test(session: Session, actor: Actor | None, endpoint_id: int | str) -> int:
    """A ``test`` delivery for the endpoint (sent right away by the caller); returns its id."""
    endpoint = get(session, endpoint_id)
    now = clock.now()
    delivery = WebhookDelivery(
        endpoint_id=endpoint.id,
        event_id=None,
        subscriber_id=None,
        message_id=new_message_id(),
        event_type=TEST_TYPE,
        body=envelope(
            TEST_TYPE, now.isoformat(), {"endpoint_id": endpoint.id, "note": "a test from nurture"}
        ),
        # Not pending: a test is sent once, by the request that made it, never by the schedule.
        status="failed",
        due_at=now,
        attempts=0,
        created_at=now,
    )
    session.add(delivery)
    session.flush()
    accounts.audit(session, actor, "webhook.test", f"webhook:{endpoint.id}", None, {"delivery": delivery.id})
    return delivery.id


def delivery_for_replay(session: Session, actor: Actor | None, delivery_id: int | str) -> WebhookDelivery:
    if isinstance(delivery_id, str):
        parsed = parse_id(delivery_id)
        if parsed is None:
            raise WebhookError("not_found", "no such delivery")
        delivery_id = parsed
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise WebhookError("not_found", "no such delivery")
    accounts.audit(
        session,
        actor,
        "webhook.replay",
        f"webhook:{delivery.endpoint_id}",
        None,
        {"delivery": delivery.id, "event_type": delivery.event_type},
    )
    return delivery


# --- reading --------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def recent_failure_rates(session: Session) -> dict[int, tuple[int, int]]:
    """Per endpoint: (attempts, failed attempts) in the last 24 hours."""
    since = clock.now() - RECENT
    rows = session.execute(
        select(
            WebhookDelivery.endpoint_id,
            func.count(WebhookAttempt.id),
            func.sum(case((WebhookAttempt.error.is_not(None), 1), else_=0)),
        )
        .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
        .where(WebhookAttempt.attempted_at >= since)
        .group_by(WebhookDelivery.endpoint_id)
    )
    return {endpoint_id: (int(total), int(failed or 0)) for endpoint_id, total, failed in rows}


def summary(endpoint: WebhookEndpoint, rates: dict[int, tuple[int, int]]) -> dict[str, Any]:
    total, failed = rates.get(endpoint.id, (0, 0))
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": list(endpoint.event_types or []),
        "enabled": endpoint.enabled,
        "disabled_at": _iso(endpoint.disabled_at),
        "disabled_reason": endpoint.disabled_reason,
        "consecutive_failures": endpoint.consecutive_failures,
        "last_success_at": _iso(endpoint.last_success_at),
        "secret_rotation_until": _iso(endpoint.previous_secret_until)
        if endpoint.previous_secret_until and endpoint.previous_secret_until > clock.now()
        else None,
        "attempts_24h": total,
        "failure_rate_24h": round(failed / total, 3) if total else None,
        "created_at": _iso(endpoint.created_at),
        "created_by": endpoint.created_by,
    }


def list_endpoints(session: Session) -> list[dict[str, Any]]:
    rates = recent_failure_rates(session)
    return [summary(e, rates) for e in session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id))]


def delivery_detail(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "message_id": delivery.message_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "due_at": _iso(delivery.due_at),
        "delivered_at": _iso(delivery.delivered_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": _iso(delivery.created_at),
        "body": delivery.body,
        "attempt_log": [
            {
                "at": _iso(a.attempted_at),
                "trigger": a.trigger,
                "status_code": a.status_code,
                "error": a.error,
                "response": a.response_snippet,
                "duration_ms": a.duration_ms,
            }
            for a in attempts
        ],
    }


def list_deliveries(session: Session, endpoint_id: int, limit: int = 100) -> list[dict[str, Any]]:
    rows = list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
    )
    attempts: dict[int, list[WebhookAttempt]] = {d.id: [] for d in rows}
    if rows:
        for attempt in session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(attempts)).order_by(WebhookAttempt.id)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return [delivery_detail(d, attempts[d.id]) for d in rows]
