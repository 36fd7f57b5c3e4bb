"""Clicks and opens: what a hit on ``/l/{token}`` or ``/o/{token}`` records (nurture.mail.links writes the
tokens), counted once per link per window and per client address, with the goal a link may report.
"""

from __future__ import annotations

import base64

from sqlalchemy import select
from sqlalchemy.orm import Session

from nurture.core.config import Settings
from nurture.mail.links import CLICK, OPEN, TOKEN
from nurture.models import Delivery, ExternalEvent, LinkClick, Step, TrackedLink, abuse_limits, events
from nurture.subscribers import goals

# A transparent 1x1 GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

# Repeated hits of one link (a double click, a reload, a scanner fetching again, a script) count once per
# window: one click, one event, one webhook, one goal report. Fixed windows, so two hits either side of a
# boundary both count: a person who comes back counts again, a flood at most twice per window.
HIT_WINDOW_SECONDS = 600


def stored_url(session: Session, token: str) -> str | None:
    """The URL a link token names, without recording anything (for ``HEAD``)."""
    if not TOKEN.match(token):
        return None
    return session.scalar(
        select(TrackedLink.url).where(TrackedLink.token == token, TrackedLink.kind == CLICK)
    )


def record_hit(
    session: Session, token: str, kind: str, settings: Settings, client_ip: str | None
) -> str | None:
    """Answer what ``token`` names (the stored URL, or "" for the pixel; None when it names nothing) and
    record the hit if it counts: a ``link_clicks`` row, the ``clicked`` / ``opened`` event (which is all
    webhooks fan out from) and, for a goal link, the goal.

    A hit counts only once per link per :data:`HIT_WINDOW_SECONDS`, and a click only while its client IP
    is within ``NURTURE_CLICK_IP_LIMIT`` per ``NURTURE_CLICK_IP_WINDOW_SECONDS``. Both are the signup
    limiter's counters (nurture.models.abuse_limits): one atomic upsert each, so of any number of parallel
    requests exactly one counts. A hit that does not count is still answered in full: the person must reach
    the page even behind a busy shared address or after a double click, and refusing the redirect (a 429)
    would punish them rather than the flood; dropping only the record costs the flood everything it could
    gain.
    """
    if not TOKEN.match(token):
        return None
    row = session.execute(
        select(TrackedLink, Delivery.subscriber_id, Delivery.step_id, Step.key)
        .join(Delivery, Delivery.id == TrackedLink.delivery_id)
        .join(Step, Step.id == Delivery.step_id)
        .where(TrackedLink.token == token, TrackedLink.kind == kind)
    ).first()
    if row is None:
        return None
    link, subscriber_id, step_id, step_key = row
    if _counts(session, link, settings, client_ip):
        _record(session, link, subscriber_id, step_id, step_key)
    return link.url or ""


def _counts(session: Session, link: TrackedLink, settings: Settings, client_ip: str | None) -> bool:
    """Take this hit's place in its client's window (clicks) and in its link's window, or answer False."""
    windows = []
    if link.kind == CLICK:
        # Opens are left out: mail providers fetch every recipient's pixel through a few proxy addresses.
        key = abuse_limits.client_key("click", client_ip, settings.secret_key)
        limit, seconds = settings.limits.click_ip_limit, settings.limits.click_ip_window_seconds
        windows.append(abuse_limits.Window.of(key, limit=limit, window_seconds=seconds))
    windows.append(abuse_limits.Window.of(f"hit:{link.id}", limit=1, window_seconds=HIT_WINDOW_SECONDS))
    try:
        for window in windows:
            abuse_limits.count_hit(session.connection(), window)
    except abuse_limits.RateLimited:
        return False
    return True


def _record(session: Session, link: TrackedLink, subscriber_id: int, step_id: int, step_key: str) -> None:
    # A goal link locks the subscriber before any row refers to it: each insert takes a share lock on the
    # subscriber row, and two clicks each holding one while waiting for FOR UPDATE would deadlock.
    subscriber = goals.lock_subscriber(session, subscriber_id) if link.goal else None
    session.add(LinkClick(link_id=link.id, subscriber_id=subscriber_id, step_id=step_id, kind=link.kind))
    if link.kind == CLICK:
        events.record(
            session,
            "clicked",
            subscriber_id=subscriber_id,
            delivery_id=link.delivery_id,
            url=link.url,
            step_key=step_key,
        )
    else:
        events.record(
            session, "opened", subscriber_id=subscriber_id, delivery_id=link.delivery_id, step_key=step_key
        )
    if link.goal and subscriber is not None:
        result = goals.apply_event(session, subscriber, link.goal, source="click")
        session.add(
            ExternalEvent(
                idempotency_key=None,
                subscriber_id=subscriber_id,
                event=link.goal,
                source="click",
                properties={"step_key": step_key},
                result=result,
            )
        )


__all__ = ["CLICK", "OPEN", "PIXEL", "TOKEN", "record_hit", "stored_url"]
