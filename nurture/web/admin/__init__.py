"""The staff UI under ``/admin``; ``install(app)`` mounts it with its templates and error pages."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from nurture.web.admin import editor, unknown
from nurture.web.admin.auth import BadRequest, Forbidden, LoginRequired, login_url
from nurture.web.admin.views import NotFound, page, router


def install(app: FastAPI) -> None:
    settings = app.state.settings
    templates = Jinja2Templates(directory=str(settings.templates_dir / "admin"))
    templates.env.globals.update(org_name=settings.org_name)
    app.state.admin_pages = templates

    async def on_login_required(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(login_url(exc.next_path), status_code=303)

    async def on_forbidden(request: Request, exc: Exception) -> HTMLResponse:
        assert isinstance(exc, Forbidden)
        return page(request, "error.html", 403, title="Not allowed", message=exc.message)

    async def on_bad_request(request: Request, exc: Exception) -> HTMLResponse:
        assert isinstance(exc, BadRequest)
        return page(request, "error.html", exc.status_code, title="Cannot read that", message=exc.message)

    async def on_not_found(request: Request, exc: Exception) -> HTMLResponse:
        assert isinstance(exc, NotFound)
        return page(request, "error.html", 404, title="Not found", message=exc.message)

    app.add_exception_handler(LoginRequired, on_login_required)
    app.add_exception_handler(Forbidden, on_forbidden)
    app.add_exception_handler(NotFound, on_not_found)
    app.add_exception_handler(BadRequest, on_bad_request)
    app.include_router(router)
    app.include_router(editor.router)  # edit a sequence, its versions and plan (nurture.versions)
    app.include_router(unknown.router)  # resolve deliveries held with an unknown outcome
