"""``GET /metrics`` in the Prometheus text format (see nurture/delivery/metrics.py for what is measured and
how).

With ``NURTURE_METRICS_TOKEN`` set, a scrape needs ``Authorization: Bearer <token>``. In production without
one the endpoint is closed (403 saying what to set): the numbers (signups, backlog, bounces) are nobody's
business but the operator's, and forgetting a setting must not publish them. Development and test keep it
open, as nothing there is anyone's real data.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nurture.core.config import Environment
from nurture.delivery.metrics import scrape_registry

router = APIRouter()
CLOSED = "metrics are off in production until NURTURE_METRICS_TOKEN is set (then send it as a Bearer token)\n"


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    token = settings.web.metrics_token
    if not token and settings.env is Environment.production:
        return PlainTextResponse(CLOSED, status_code=403)
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return PlainTextResponse(
                "metrics need Authorization: Bearer <NURTURE_METRICS_TOKEN>\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    registry = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        # One per app: its event watermark makes each later scrape count only new rows.
        registry = request.app.state.metrics_registry = scrape_registry()
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
