"""A person's rights over their data, from their subscriber page: erasure (confirmed by typing the address)
and a download of everything stored about them (JSON). Both go through
:mod:`nurture.subscribers.staff_actions`,
audited, the same code as the API and the CLI."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from nurture.core.db import transaction
from nurture.models import Subscriber
from nurture.staff import accounts
from nurture.subscribers import staff_actions
from nurture.web.admin.common import NotFound, page, parse_subscriber_id, subscriber_or_404
from nurture.web.admin.deps import Editor, Staff

router = APIRouter(prefix="/admin", include_in_schema=False)
ERASED = "Erased. An anonymous hash keeps the address from being re-added."


def erase(actor: accounts.Actor, target: int, fields: dict[str, Any]) -> tuple[dict[str, Any], None, int]:
    """Erase only when the form repeats the address: the confirmation step of an irreversible action."""
    with transaction() as session:
        subscriber = session.get(Subscriber, target)
        if subscriber is None:
            raise staff_actions.ActionError("not_found", "there is no such subscriber")
        typed = fields.get("confirm")
        if not isinstance(typed, str) or typed.strip().lower() != subscriber.email:
            raise staff_actions.ActionError(
                "invalid", "type the subscriber's email address exactly to confirm the erasure"
            )
        return staff_actions.act(session, actor, target, "erase"), None, 200


def erase_page(
    request: Request,
    who: Staff,
    target: int,
    *,
    status_code: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    with transaction() as session:
        subscriber = subscriber_or_404(session, target)
        email = subscriber.email
    return page(
        request,
        "erase.html",
        status_code,
        csrf=who.csrf,
        actor=who.actor,
        id=target,
        email=email,
        error=error,
    )


@router.get("/subscribers/{subscriber_id}/erase")
def erase_confirm_page(request: Request, subscriber_id: str, who: Editor) -> HTMLResponse:
    return erase_page(request, who, parse_subscriber_id(subscriber_id))


@router.get("/subscribers/{subscriber_id}/export")
def subscriber_export(request: Request, subscriber_id: str, who: Editor) -> Response:
    target = parse_subscriber_id(subscriber_id)
    try:
        with transaction() as session:
            data = staff_actions.export_one(session, who.actor, target)
    except staff_actions.ActionError:
        raise NotFound("There is no such subscriber.") from None
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="subscriber-{target}.json"',
            "Cache-Control": "no-store",
        },
    )
