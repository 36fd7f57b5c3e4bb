"""Deliveries whose outcome is unknown, in the JSON API: list them, and resolve one held for a person.

Same conventions as :mod:`nurture.web.api`: bearer tokens, role checks, ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from nurture import unknown_outcomes
from nurture.db import transaction
from nurture.ids import parse_id
from nurture.models import StaffRole
from nurture.web.api import ApiError, _actor, _sequence

router = APIRouter(prefix="/api/v1", tags=["staff"])
STATUS_OF = {"not_found": 404, "not_held": 409, "invalid": 400}


@router.get(
    "/deliveries/unknown",
    summary="Sends whose outcome is unknown (a worker died or the connection broke with the email on the "
    "wire), newest first, with how each was resolved; ?held=true for those waiting for a person, "
    "?sequence=SLUG for one sequence",
)
def list_unknown(request: Request, held: str | None = None, sequence: str | None = None) -> JSONResponse:
    _actor(request, StaffRole.viewer)
    if held not in (None, "true", "false"):
        raise ApiError(400, "invalid", "held must be true or false")
    with transaction() as session:
        sequence_id = _sequence(session, sequence).id if sequence else None
        found = unknown_outcomes.unknown_outcomes(session, sequence_id=sequence_id, held_only=held == "true")
        return JSONResponse({"unknown_outcomes": [u.as_dict() for u in found]})


@router.post(
    "/deliveries/{delivery_id}/{action}",
    summary="Resolve a delivery held with an unknown outcome: mark-sent (a person checked it arrived) or "
    "send-again (due now, same Message-ID); 409 when it is not held",
)
async def resolve_held(request: Request, delivery_id: str, action: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.editor)
    target = parse_id(delivery_id)
    if target is None:
        raise ApiError(404, "not_found", "there is no such delivery")
    if action not in unknown_outcomes.ACTIONS:
        raise ApiError(404, "not_found", f"actions: {', '.join(unknown_outcomes.ACTIONS)}")
    settings = request.app.state.settings

    def work() -> dict[str, Any]:
        with transaction() as session:
            try:
                return unknown_outcomes.resolve(session, settings, target, action, actor)
            except unknown_outcomes.ResolveError as exc:
                raise ApiError(STATUS_OF[exc.code], exc.code, exc.message) from None

    return JSONResponse(await run_in_threadpool(work))
