"""The ASGI application: public pages and health checks."""

from __future__ import annotations

from fastapi import FastAPI

from nurture.config import get_settings
from nurture.logs import RequestIdMiddleware
from nurture.web import (
    admin,
    api,
    api_deliveries,
    api_events,
    api_versions,
    api_webhooks,
    bounces,
    health,
    metrics,
    public,
    tracking,
    unavailable,
)
from nurture.web.admin import webhooks as admin_webhooks
from nurture.web.pages import page_templates


def create_app() -> FastAPI:
    settings = get_settings()  # fail at start-up, not on the first request, when settings are unusable
    app = FastAPI(title="nurture", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.pages = page_templates(settings)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.add_middleware(RequestIdMiddleware)  # X-Request-ID in, out and on every log line
    app.include_router(public.router)
    app.include_router(bounces.router)
    admin.install(app)  # staff UI under /admin
    api.install(app)  # staff JSON API under /api/v1
    app.include_router(api_webhooks.router)  # /api/v1/webhooks (outbound webhooks)
    app.include_router(admin_webhooks.router)  # /admin/webhooks
    app.include_router(api_versions.router)  # /api/v1/sequences/{slug}/plan|publish|archive
    app.include_router(api_deliveries.router)  # /api/v1/deliveries: unknown outcomes, held ones resolved
    app.include_router(api_events.router)  # POST /api/v1/events (goals and exit events)
    app.include_router(tracking.router)  # /l/{token} clicks, /o/{token} opens
    unavailable.install(app)  # the database unreachable or saturated: 503 with Retry-After, never a 500
    return app
