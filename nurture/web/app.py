"""The ASGI application: public pages and health checks."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from nurture.core.config import get_settings
from nurture.core.logs import RequestIdMiddleware
from nurture.web import admin, api, health, metrics
from nurture.web.admin import webhooks as admin_webhooks
from nurture.web.api import bounces
from nurture.web.public import email_links, landing, tracking, unavailable
from nurture.web.public.pages import page_templates

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app() -> FastAPI:
    settings = get_settings()  # fail at start-up, not on the first request, when settings are unusable
    app = FastAPI(title="nurture", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.pages = page_templates(settings)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.add_middleware(RequestIdMiddleware)  # X-Request-ID in, out and on every log line
    app.include_router(landing.router)  # GET / (where to go) and, in development, /dev/mail
    # The staff UI's stylesheet and charts' assets, served by nurture itself: no CDN, works offline.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(email_links.router)
    app.include_router(bounces.router)
    admin.install(app)  # staff UI under /admin
    api.install(app)  # staff JSON API under /api/v1, one router per resource (nurture/web/api/)
    app.include_router(admin_webhooks.router)  # /admin/webhooks
    app.include_router(tracking.router)  # /l/{token} clicks, /o/{token} opens
    unavailable.install(app)  # the database unreachable or saturated: 503 with Retry-After, never a 500
    return app
