"""FastAPI dependencies of the staff UI: who is signed in, with the role a route needs, and the form a staff
POST carries once its CSRF token checks out.

A route states what it needs in its signature::

    @router.get("/sequences")
    def sequences_page(request: Request, who: Viewer) -> HTMLResponse: ...

    @router.post("/sequences/{slug}/pause")
    async def pause_form(request: Request, slug: str, form: EditorForm) -> Response: ...

The order of the checks is the one every staff route has always had: signed in (else a redirect to the
login page), then the role (else 403), then, for a POST, the form is read and its CSRF token compared
(else 403), and only then does the handler look at the input. A route that must answer 404 for an unknown
action before anything else declares a dependency for that before the staff one: FastAPI solves a route's
dependencies in the order of its parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from nurture.models import StaffRole
from nurture.staff.accounts import Actor
from nurture.web.admin.auth import BadRequest, Forbidden, StaffSession, check_csrf, require
from nurture.web.admin.common import read_form

EXPIRED_FORM = "This form has expired or came from another site. Go back, reload and try again."
MAX_UPLOAD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Staff:
    """The signed-in staff member and their session (its CSRF token goes into every form on the page)."""

    actor: Actor
    session: StaffSession

    @property
    def csrf(self) -> str:
        return self.session.csrf


@dataclass(frozen=True)
class StaffForm(Staff):
    """A staff POST whose CSRF token checked out: the form's fields, flat."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class StaffUpload(StaffForm):
    """A staff POST that may carry one file (multipart/form-data); ``data`` is None without one."""

    data: bytes | None


@functools.cache
def require_role(needed: StaffRole) -> Callable[[Request], Staff]:
    """A dependency: the signed-in staff member with at least ``needed``."""

    # Synchronous on purpose: it reads the database, so FastAPI runs it in the thread pool.
    def signed_in(request: Request) -> Staff:
        actor, current = require(request, needed)
        return Staff(actor, current)

    signed_in.__name__ = f"require_{needed.value}"
    return signed_in


def _checked_form(
    needed: StaffRole, name: str, max_fields: int | None, lists: frozenset[str]
) -> Callable[[Request], Awaitable[StaffForm]]:
    async def checked(request: Request) -> StaffForm:
        actor, current = await run_in_threadpool(require, request, needed)
        fields = await read_form(request, max_fields=max_fields, lists=lists)
        if not check_csrf(request, fields, current):
            raise Forbidden(EXPIRED_FORM)
        return StaffForm(actor, current, fields)

    checked.__name__ = name
    return checked


@functools.cache
def form_for(needed: StaffRole) -> Callable[[Request], Awaitable[StaffForm]]:
    """A dependency for a staff POST: signed in with ``needed``, same-site with the session's CSRF token."""
    return _checked_form(needed, f"{needed.value}_form", None, frozenset())


@functools.cache
def list_form_for(needed: StaffRole, name: str, most: int) -> Callable[[Request], Awaitable[StaffForm]]:
    """Like :func:`form_for`, for a form with up to ``most`` values of the field ``name`` (checkboxes,
    read as a list); the other fields stay single-valued."""
    return _checked_form(needed, f"{needed.value}_list_form", most + 20, frozenset({name}))


@functools.cache
def upload_for(needed: StaffRole) -> Callable[[Request], Awaitable[StaffUpload]]:
    """Like :func:`form_for`, for a form that may carry one file, read up to MAX_UPLOAD_BYTES."""

    async def checked(request: Request) -> StaffUpload:
        from starlette.datastructures import UploadFile

        actor, current = await run_in_threadpool(require, request, needed)
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "multipart/form-data":
            fields = await read_form(request)
            if not check_csrf(request, fields, current):
                raise Forbidden(EXPIRED_FORM)
            return StaffUpload(actor, current, fields, None)
        try:
            form = await request.form(max_files=1, max_fields=20)
        except Exception as exc:  # python-multipart's parse errors: a bad upload, never a 500
            raise BadRequest(400, f"The upload could not be read: {exc}") from None
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not check_csrf(request, fields, current):
            raise Forbidden(EXPIRED_FORM)
        upload = form.get("file")
        data = None
        if isinstance(upload, UploadFile):
            data = await upload.read(MAX_UPLOAD_BYTES + 1)
            if len(data) > MAX_UPLOAD_BYTES:
                raise BadRequest(413, f"The file is larger than {MAX_UPLOAD_BYTES // 2**20} MB.")
        return StaffUpload(actor, current, fields, data or None)

    checked.__name__ = f"{needed.value}_upload"
    return checked


Viewer = Annotated[Staff, Depends(require_role(StaffRole.viewer))]
Editor = Annotated[Staff, Depends(require_role(StaffRole.editor))]
Admin = Annotated[Staff, Depends(require_role(StaffRole.admin))]
ViewerForm = Annotated[StaffForm, Depends(form_for(StaffRole.viewer))]
EditorForm = Annotated[StaffForm, Depends(form_for(StaffRole.editor))]
AdminForm = Annotated[StaffForm, Depends(form_for(StaffRole.admin))]
EditorUpload = Annotated[StaffUpload, Depends(upload_for(StaffRole.editor))]
