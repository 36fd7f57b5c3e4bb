"""Jinja2 pages for people (``templates/web/``), branded from settings."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from nurture.core.config import Settings


def page_templates(settings: Settings) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(settings.templates_dir / "web"))
    templates.env.globals.update(
        org_name=settings.org_name,
        logo_url=settings.logo_url or None,
        brand_color=settings.brand_color,
        contact_url=settings.contact_url,
    )
    return templates


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.pages
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    # Pages carry per-subscriber tokens: never cache them in shared caches or leak them as referrers.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
