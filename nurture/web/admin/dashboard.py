"""The staff home page (``/admin/``): is everything healthy, and what needs a person?

Figures (:func:`nurture.sequences.figures_over_time.overview`): emails sent per day, live enrollments, goals
met, and the unsubscribe, bounce and complaint rates of the last 7 days against the 7 before. Alerts, each
with the page where a person acts on it: sends held with an unknown outcome, paused sequences, disabled
webhook endpoints, the circuit breaker open, and bounce or complaint rates above the mailbox providers' limits
(``NURTURE_ALERT_BOUNCE_RATE``, ``NURTURE_ALERT_COMPLAINT_RATE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from nurture.core.config import Settings
from nurture.core.db import transaction
from nurture.models import WebhookEndpoint
from nurture.sequences import figures_over_time
from nurture.web.admin import charts
from nurture.web.admin.common import page, settings_of
from nurture.web.admin.deps import Viewer

router = APIRouter(prefix="/admin", include_in_schema=False)


@dataclass(frozen=True)
class Alert:
    level: str  # "error" (act now) or "warning"
    message: str
    href: str
    action: str


def breaker_open_for(settings: Settings) -> float | None:
    """Seconds the sending circuit breaker stays open; None when this process cannot know.

    With Redis the breaker is shared and readable from here; the embedded broker keeps one per worker
    process, which the web process cannot see (the workers log when theirs opens)."""
    from nurture.delivery.transport_guards import circuit_breaker

    if settings.embedded_broker:
        return None
    try:
        return circuit_breaker(settings).open_for()
    except Exception:  # Redis unreachable: the dashboard still answers, without this one figure
        return None


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.2f}%"


def alerts(
    settings: Settings, view: figures_over_time.Overview, disabled: list[WebhookEndpoint]
) -> list[Alert]:
    found: list[Alert] = []
    if view.held_unknown:
        found.append(
            Alert(
                "error",
                f"{view.held_unknown} email(s) held with an unknown outcome: a crash left it unclear whether "
                "they went out. Decide for each: mark sent, or send again.",
                "/admin/subscribers?status=held",
                "See who",
            )
        )
    opened = breaker_open_for(settings)
    if opened:
        found.append(
            Alert(
                "error",
                f"Sending is stopped for {opened:.0f} more seconds: most recent SMTP attempts failed "
                "(circuit breaker). Check the mail server; sending resumes by itself.",
                "/healthz",
                "Health check",
            )
        )
    if view.bounces.value is not None and view.bounces.value > settings.web.alert_bounce_rate:
        found.append(
            Alert(
                "error",
                f"Bounce rate {_percent(view.bounces.value)} over 7 days, above "
                f"{_percent(settings.web.alert_bounce_rate)}: Gmail and Yahoo throttle or junk senders whose "
                "lists bounce. Check recent imports.",
                "/admin/subscribers?status=suppressed",
                "Suppressed addresses",
            )
        )
    if view.complaints.value is not None and view.complaints.value > settings.web.alert_complaint_rate:
        found.append(
            Alert(
                "error",
                f"Spam complaint rate {_percent(view.complaints.value)} over 7 days, above Gmail and Yahoo's "
                f"limit of {_percent(settings.web.alert_complaint_rate)}.",
                "/admin/sequences",
                "Sequences",
            )
        )
    for slug in view.paused_sequences:
        found.append(
            Alert(
                "warning",
                f"Sequence {slug} is paused: its emails wait.",
                f"/admin/sequences/{slug}",
                "Open it",
            )
        )
    for endpoint in disabled:
        why = f" ({endpoint.disabled_reason})" if endpoint.disabled_reason else ""
        found.append(
            Alert(
                "warning",
                f"Webhook {endpoint.url} is disabled{why}: events for it are kept but not sent.",
                f"/admin/webhooks/{endpoint.id}",
                "Open it",
            )
        )
    return found


@router.get("")
def home_redirect() -> RedirectResponse:
    return RedirectResponse("/admin/", status_code=303)


@router.get("/")
def dashboard(request: Request, who: Viewer) -> HTMLResponse:
    settings = settings_of(request)
    tz = ZoneInfo(settings.web.report_timezone)
    with transaction() as session:
        view = figures_over_time.overview(session, tz, days=30)
        disabled = list(session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(False))))
        found = alerts(settings, view, disabled)
    return page(
        request,
        "dashboard.html",
        csrf=who.csrf,
        actor=who.actor,
        view=view,
        alerts=found,
        chart=charts.both(charts.per_day, view.days, {"emails sent": view.sent_per_day}, bars=True),
        zone=settings.web.report_timezone,
        percent=_percent,
        breaker_known=not settings.embedded_broker,
        notice=request.query_params.get("done"),
    )
