"""The staff UI under ``/admin``: server-rendered pages (templates in ``templates/admin/``).

``install(app)`` mounts every module's router with the templates and the error pages. One module per area:

=============  =======================================================================================
auth           the session cookie, CSRF tokens, role checks, safe redirects after sign-in
deps           FastAPI dependencies: ``Viewer``/``Editor``/``Admin`` (who is signed in, with that role)
               and ``*Form``/``EditorUpload`` (a POST whose CSRF token checked out, with its fields)
common         page rendering with the staff headers, NotFound, form reading, shared lookups
login          sign in and out dashboard      the home page ``/admin/``: sends per day, rates with their
trend, alerts for a person setup          the first admin, created in the browser with the one-time setup link
sequences      the sequence list, one sequence (steps, timeline), pause / resume / schedule
editor         edit a sequence as a draft, its plan, publish, discard, archive (nurture.sequences.versions)
previews       a step's email as a subscriber would get it, and a test send
results        a sequence's results per step and per day (charts, CSV download), the funnel
subscribers    the list (filters, sorting, pages, bulk actions behind a confirmation), one subscriber's
               page and the actions on it
erasure        erasing a subscriber (typed confirmation) and the download of their data
imports        CSV import into a sequence, the CSV export of every subscriber (direct, or as a job)
enrolment      enrolling subscribers who are already here
progress       the page that follows long work (imports, exports, enrolling thousands) with a progress bar
timeline       the sequence page's timeline as a strip of days (window shut, holidays, each email)
unknown        deliveries held with an unknown outcome: mark sent or send again
users          staff accounts and API tokens (admins)
audit          the audit log (admins)
webhooks       outbound webhook endpoints (mounted by ``nurture.web.app``)
charts         pygal charts rendered on the server as SVG (no JavaScript, no CDN)
=============  =======================================================================================
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from nurture.web.admin import (
    audit,
    dashboard,
    editor,
    enrolment,
    erasure,
    imports,
    login,
    previews,
    progress,
    results,
    sequences,
    setup,
    subscribers,
    unknown,
    users,
)
from nurture.web.admin.auth import BadRequest, Forbidden, LoginRequired, login_url
from nurture.web.admin.common import NotFound, page

ROUTERS = (
    login,
    setup,
    dashboard,
    sequences,
    previews,
    results,
    subscribers,
    erasure,
    imports,
    enrolment,
    progress,
    users,
    audit,
)


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
    for module in ROUTERS:
        app.include_router(module.router)
    app.include_router(editor.router)  # edit a sequence, its versions and plan (nurture.sequences.versions)
    app.include_router(unknown.router)  # resolve deliveries held with an unknown outcome
