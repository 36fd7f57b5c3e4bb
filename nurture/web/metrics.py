"""``GET /metrics`` in the Prometheus text format (see nurture/metrics.py for what is measured and how)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nurture.metrics import scrape_registry

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    token = request.app.state.settings.metrics_token
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
