"""``POST /api/v1/events``: another system reports that a subscriber did something (contacted the centre,
booked a consultation). Goals complete, and exit events end, the matching enrollments
(``nurture.subscribers.goals``).

The same ``idempotency_key`` again answers the first result with ``"replayed": true`` and changes nothing;
the same key for a different event or subscriber is a 409.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from nurture.core.ids import MAX_ROW_ID
from nurture.sequences.policy import EVENT_NAME
from nurture.subscribers import goals
from nurture.web.api.deps import Editor
from nurture.web.api.errors import ApiError, error_responses
from nurture.web.api.routing import ApiRoute
from nurture.web.api.schemas import JsonObject, RequestBody

router = APIRouter(prefix="/api/v1", tags=["events"], route_class=ApiRoute)


class EventReport(RequestBody):
    """Name the subscriber by ``email`` or by ``subscriber_id`` (one of them)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "email": "ana@example.com",
                    "event": "contacted",
                    "properties": {"channel": "phone"},
                    "idempotency_key": "crm-42",
                }
            ]
        }
    )

    email: str | None = None
    subscriber_id: int | None = Field(default=None, gt=0, le=MAX_ROW_ID)
    # The pattern and the limits are nurture.subscribers.goals' own; it checks them again (it has other
    # callers).
    event: str = Field(json_schema_extra={"pattern": EVENT_NAME.pattern}, examples=["contacted"])
    properties: JsonObject | None = Field(
        default=None, description=f"At most {goals.MAX_PROPERTIES_BYTES} bytes of JSON; kept with the event"
    )
    idempotency_key: str = Field(
        description=f"Unique per event, at most {goals.MAX_KEY} characters", examples=["crm-42"]
    )


class GoalMet(BaseModel):
    sequence: str
    enrollment_id: int
    goal: str
    step_key: str | None
    cancelled: int


class Exited(BaseModel):
    sequence: str
    enrollment_id: int
    reason: str
    cancelled: int


class EventResult(BaseModel):
    subscriber_id: int
    event: str
    goals_met: list[GoalMet]
    exited: list[Exited]
    replayed: bool = Field(description="true: this key was seen before; this is the first report's result")


@router.post(
    "/events",
    summary='Report an event: {"email" | "subscriber_id", "event", "properties"?, "idempotency_key"}',
    response_model=EventResult,
    responses=error_responses(400, 401, 403, 404, 409, 413, 415),
)
def report_event(actor: Editor, body: EventReport) -> JSONResponse:
    try:
        reported = goals.report_event(goals.parse_report(body.model_dump()))
    except goals.EventError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    return JSONResponse({**reported.result, "replayed": reported.replayed})
