"""``POST /api/v1/events``: another system reports that a subscriber did something (contacted the centre,
booked a consultation). Goals complete, and exit events end, the matching enrollments (``nurture.goals``).

Body: ``{"email": ... | "subscriber_id": ..., "event": "contacted", "properties": {...},
"idempotency_key": "..."}``. The same key again answers the first result with ``"replayed": true`` and
changes nothing; the same key for a different event or subscriber is a 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from nurture import goals
from nurture.models import StaffRole
from nurture.web.api import ApiError, _actor, _json

router = APIRouter(prefix="/api/v1", tags=["staff"])


@router.post(
    "/events",
    summary='Report an event: {"email" | "subscriber_id", "event", "properties"?, "idempotency_key"}',
)
async def report_event(request: Request) -> JSONResponse:
    await run_in_threadpool(_actor, request, StaffRole.editor)
    body = await _json(request)

    def work() -> dict[str, Any]:
        try:
            reported = goals.report_event(goals.parse_report(body))
        except goals.EventError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return {**reported.result, "replayed": reported.replayed}

    return JSONResponse(await run_in_threadpool(work))
