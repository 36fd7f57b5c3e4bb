"""The audit log (admins): the latest 500 staff actions, newest first."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from nurture.core.db import transaction
from nurture.models import AuditLog
from nurture.web.admin.common import page
from nurture.web.admin.deps import Admin

router = APIRouter(prefix="/admin", include_in_schema=False)


@router.get("/audit")
def audit_page(request: Request, who: Admin) -> HTMLResponse:
    with transaction() as session:
        entries = list(session.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(500)))
    return page(request, "audit.html", csrf=who.csrf, actor=who.actor, entries=entries)
