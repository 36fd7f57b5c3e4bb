"""Deliveries whose outcome is unknown: list them, and resolve one held for a person (mark-sent: a person
checked it arrived; send-again: due now, with the same Message-ID)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from nurture.core.db import transaction
from nurture.delivery import unknown_outcomes
from nurture.web.api.deps import AppSettings, DbSession, DeliveryId, Editor, Viewer, find_sequence
from nurture.web.api.errors import ApiError, error_responses
from nurture.web.api.routing import ApiRoute
from nurture.web.api.schemas import UnknownOutcome

router = APIRouter(prefix="/api/v1", tags=["deliveries"], route_class=ApiRoute)
STATUS_OF = {"not_found": 404, "not_held": 409, "invalid": 400}


class UnknownOutcomes(BaseModel):
    unknown_outcomes: list[UnknownOutcome]


class Resolved(BaseModel):
    delivery: int
    status: str
    action: str


@router.get(
    "/deliveries/unknown",
    summary="Sends whose outcome is unknown (a worker died or the connection broke with the email on the "
    "wire), newest first, with how each was resolved; ?held=true for those waiting for a person, "
    "?sequence=SLUG for one sequence",
    response_model=UnknownOutcomes,
    responses=error_responses(400, 401, 404),
)
def list_unknown(
    actor: Viewer,
    session: DbSession,
    held: Annotated[Literal["true", "false"] | None, Query(description="true: only those held")] = None,
    sequence: Annotated[str | None, Query(description="One sequence's slug")] = None,
) -> JSONResponse:
    sequence_id = find_sequence(session, sequence).id if sequence else None
    found = unknown_outcomes.unknown_outcomes(session, sequence_id=sequence_id, held_only=held == "true")
    return JSONResponse({"unknown_outcomes": [u.as_dict() for u in found]})


@router.post(
    "/deliveries/{delivery_id}/{action}",
    summary="Resolve a delivery held with an unknown outcome: mark-sent (a person checked it arrived) or "
    "send-again (due now, same Message-ID); 409 when it is not held",
    response_model=Resolved,
    responses=error_responses(401, 403, 404, 409),
)
def resolve_held(
    actor: Editor,
    settings: AppSettings,
    delivery_id: DeliveryId,
    # Any other action is a path that does not exist: 404, not a validation error.
    action: Annotated[str, Path(json_schema_extra={"enum": list(unknown_outcomes.ACTIONS)})],
) -> JSONResponse:
    if action not in unknown_outcomes.ACTIONS:
        raise ApiError(404, "not_found", f"actions: {', '.join(unknown_outcomes.ACTIONS)}")
    with transaction() as session:
        try:
            return JSONResponse(unknown_outcomes.resolve(session, settings, delivery_id, action, actor))
        except unknown_outcomes.ResolveError as exc:
            raise ApiError(STATUS_OF[exc.code], exc.code, exc.message) from None
