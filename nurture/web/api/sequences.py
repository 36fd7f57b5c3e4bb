"""Sequences: the list, one sequence, its per-step figures, and the controls (pause, resume, schedule,
enroll existing subscribers). Controls lock the sequence and are audited, in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import Sequence
from nurture.sequences import control
from nurture.sequences.results import sequence_stats, standing_counts
from nurture.sequences.schedule import format_delay
from nurture.sequences.timetable import window_of
from nurture.staff import accounts
from nurture.staff.accounts import Actor
from nurture.web.api.deps import AppSettings, DbSession, Editor, SequenceSlug, Viewer, find_sequence
from nurture.web.api.errors import ApiError, error_responses
from nurture.web.api.routing import ApiRoute
from nurture.web.api.schemas import Instant, NoBody, OptionalInstant, RequestBody, Timestamp

router = APIRouter(prefix="/api/v1", tags=["sequences"], route_class=ApiRoute)
MAX_ENROLL_EMAILS = 10_000

# --- models ---------------------------------------------------------------------------------------------


class SequenceSummary(BaseModel):
    slug: str
    name: str
    status: str = Field(description="active, paused, scheduled, draft or archived")
    paused_at: Timestamp
    activate_at: Timestamp
    version: int | None = Field(description="the live version's number")
    steps: int
    standing: dict[str, int] = Field(description="per step key: live enrollments whose next email it is")


class SequenceList(BaseModel):
    sequences: list[SequenceSummary]


class Window(BaseModel):
    days: list[int] = Field(description="0 = Monday ... 6 = Sunday")
    start: str = Field(examples=["09:00"])
    end: str = Field(examples=["17:00"])
    description: str = Field(examples=["Mon-Fri 09:00-17:00"])


class StepInfo(BaseModel):
    key: str
    position: int
    delay: str = Field(examples=["2d"])
    delay_seconds: int
    template: str
    window: bool = Field(True, description="false: sent at its due time, outside the window and holidays")


class SequenceDetail(SequenceSummary):
    timezone: str | None
    window: Window | None
    holidays: str | None = Field(
        None, description="public-holiday calendar closing the window (the subscriber's country's when known)"
    )
    step_list: list[StepInfo]


class VariantFigures(BaseModel):
    key: str
    sent: int
    clicks: int
    unique_clickers: int
    unsubscribes: int
    goals: int


class VariantVersus(BaseModel):
    variant: str = Field(description="the variant the leader is compared with")
    z: float | None
    p_value: float | None = Field(description="two-sided; null while the test is undefined (no data yet)")
    significant: bool = Field(description="p_value below alpha")
    verdict: str = Field(description='"not yet significant (p = ...)" until the numbers say otherwise')


class VariantComparison(BaseModel):
    metric: str = Field(description="the proportion compared: unique clickers over emails sent")
    leader: str | None = Field(description="the variant with the highest rate; null before any email went")
    against: list[VariantVersus]
    alpha: float


class StepFigures(BaseModel):
    key: str
    position: int
    scheduled: int
    held: int
    sent: int
    failed: int
    bounced: int
    cancelled: int
    ambiguous: int
    unknown: dict[str, int]
    skipped: dict[str, int]
    unsubscribed_after: int
    current: int
    clicks: int
    clickers: int
    opens: int
    openers: int
    goals: int
    conversion_rate: float | None
    variants: list[VariantFigures] | None = Field(
        None, description="an A/B test on this step: figures per variant (docs/experiments.md); null: no test"
    )
    comparison: VariantComparison | None = Field(
        None, description="the leading variant against each other one (a two-proportion z-test)"
    )
    winner: str | None = Field(None, description="the variant everyone gets since staff ended the test")


class SequenceFigures(BaseModel):
    sequence: str
    enrolled: int
    enrollments: dict[str, int]
    unsubscribed_before_first: int
    goals: int
    goals_before_first: int
    steps: list[StepFigures]


class ControlState(BaseModel):
    """The sequence after a control action."""

    sequence: str
    status: str
    paused_at: Timestamp
    activate_at: Timestamp


class Paused(ControlState):
    held: int = Field(description="pending emails now held")


class ResumeBody(RequestBody):
    policy: Annotated[control.ResumePolicy, Field(strict=False)] = Field(
        description="shift: every held email moves by the length of the pause; send_due: what fell due "
        "during the pause goes now, at the resume rate"
    )


class Resumed(ControlState):
    policy: str
    resumed: int
    rescheduled: int
    cancelled: int


class ScheduleBody(RequestBody):
    activate_at: Instant = Field(description="When the sequence starts; in the future")


class Scheduled(ControlState):
    retimed: int


class EnrollBody(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"emails": ["ana@example.com"]}, {"all_active": True}]}
    )

    emails: list[str] | None = Field(
        default=None, max_length=MAX_ENROLL_EMAILS, description="These addresses (or all_active)"
    )
    all_active: bool | None = Field(default=None, description="true: every active subscriber not enrolled")
    start_at: OptionalInstant = Field(default=None, description="Start then instead of now; not in the past")


class Enrolled(BaseModel):
    sequence: str
    enrolled: int
    already_enrolled: int
    unsubscribed: int
    suppressed: int
    not_confirmed: int
    not_found: int
    invalid: list[str]


# --- shapes -----------------------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def sequence_summary(sequence: Sequence, standing: dict[int, int]) -> dict[str, Any]:
    version = sequence.current_version
    return {
        "slug": sequence.slug,
        "name": sequence.name,
        "status": control.effective_status(sequence),
        "paused_at": _iso(sequence.paused_at),
        "activate_at": _iso(sequence.activate_at),
        "version": version.number if version else None,
        "steps": len(version.steps) if version else 0,
        "standing": {s.key: standing.get(s.position, 0) for s in version.steps} if version else {},
    }


def sequence_detail(sequence: Sequence) -> dict[str, Any]:
    version = sequence.current_version
    window = window_of(version) if version else None
    return {
        **sequence_summary(sequence, {}),
        "timezone": version.timezone if version else None,
        "window": (
            {
                "days": sorted(window.days),
                "start": f"{window.start:%H:%M}",
                "end": f"{window.end:%H:%M}",
                "description": window.describe(),
            }
            if window
            else None
        ),
        "holidays": version.holidays if version else None,
        "step_list": [
            {
                "key": s.key,
                "position": s.position,
                "delay": format_delay(timedelta(seconds=s.delay_seconds)),
                "delay_seconds": s.delay_seconds,
                "template": s.template,
                "window": s.use_window,
            }
            for s in (version.steps if version else [])
        ],
    }


# --- reads ------------------------------------------------------------------------------------------------


@router.get(
    "/sequences",
    summary="Every sequence with its status and where live enrollments stand",
    response_model=SequenceList,
    responses=error_responses(401),
)
def list_sequences(actor: Viewer, session: DbSession) -> JSONResponse:
    standing = standing_counts(session)
    rows = session.scalars(select(Sequence).order_by(Sequence.slug)).all()
    return JSONResponse({"sequences": [sequence_summary(s, standing.get(s.id, {})) for s in rows]})


@router.get(
    "/sequences/{slug}",
    summary="One sequence: steps with delay, window and template",
    response_model=SequenceDetail,
    responses=error_responses(401, 404),
)
def get_sequence(actor: Viewer, session: DbSession, slug: SequenceSlug) -> JSONResponse:
    return JSONResponse(sequence_detail(find_sequence(session, slug)))


@router.get(
    "/sequences/{slug}/stats",
    summary="Per step: scheduled, sent, failed, bounced, skipped, left",
    response_model=SequenceFigures,
    responses=error_responses(401, 404),
)
def get_stats(actor: Viewer, session: DbSession, slug: SequenceSlug) -> JSONResponse:
    return JSONResponse(sequence_stats(session, find_sequence(session, slug)).as_dict())


# --- controls ---------------------------------------------------------------------------------------------

CONTROL_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415)


def run_control(
    actor: Actor, slug: str, action: str, work: Callable[[Session, Sequence], dict[str, Any]]
) -> dict[str, Any]:
    """Lock the sequence, apply ``work(session, sequence)``, audit before/after; one transaction."""
    try:
        with transaction() as session:
            sequence = control.lock(session, slug)
            before = control.snapshot(sequence)
            result = work(session, sequence)
            after = control.snapshot(sequence)
            accounts.audit(session, actor, f"sequence.{action}", f"sequence:{slug}", before, after)
            return {"sequence": slug, **after, **result}
    except control.ControlError as exc:
        status = {"not_found": 404, "conflict": 409}.get(exc.code, 400)
        raise ApiError(status, exc.code, exc.message) from None


@router.post(
    "/sequences/{slug}/pause",
    summary="Hold every email of the sequence until resumed",
    response_model=Paused,
    responses=CONTROL_ERRORS,
)
def pause_sequence(actor: Editor, slug: SequenceSlug, body: NoBody) -> JSONResponse:
    return JSONResponse(run_control(actor, slug, "pause", lambda s, seq: {"held": control.pause(s, seq)}))


@router.post(
    "/sequences/{slug}/resume",
    summary='Resume: {"policy": "shift"} (move by the pause) or {"policy": "send_due"} (rate limited)',
    response_model=Resumed,
    responses=CONTROL_ERRORS,
)
def resume_sequence(
    actor: Editor, settings: AppSettings, slug: SequenceSlug, body: ResumeBody
) -> JSONResponse:
    rate = settings.limits.resume_rate_per_minute

    def work(session: Session, sequence: Sequence) -> dict[str, Any]:
        result = control.resume(session, sequence, body.policy, per_minute=rate)
        return {"policy": body.policy.value, **result.__dict__}

    return JSONResponse(run_control(actor, slug, "resume", work))


@router.post(
    "/sequences/{slug}/schedule",
    summary='Start at a time: {"activate_at": ISO 8601 with offset}',
    response_model=Scheduled,
    responses=CONTROL_ERRORS,
)
def schedule_sequence(actor: Editor, slug: SequenceSlug, body: ScheduleBody) -> JSONResponse:
    return JSONResponse(
        run_control(
            actor, slug, "schedule", lambda s, seq: {"retimed": control.schedule(s, seq, body.activate_at)}
        )
    )


@router.post(
    "/sequences/{slug}/enroll",
    summary='Enroll existing subscribers: {"emails": [...]} or {"all_active": true}, optional start_at',
    response_model=Enrolled,
    responses=CONTROL_ERRORS,
)
def enroll_subscribers(actor: Editor, slug: SequenceSlug, body: EnrollBody) -> JSONResponse:
    from nurture.subscribers.importer import enroll_and_audit

    all_active = body.all_active is True
    if all_active == (body.emails is not None):
        raise ApiError(400, "invalid", 'send either "emails": [...] or "all_active": true')
    start_at = body.start_at
    if start_at is not None and start_at < clock.now() - timedelta(minutes=5):
        # A start in the past would make every missed step due at once: the flood this API must not cause.
        raise ApiError(400, "invalid", "start_at must not be in the past")
    with transaction() as session:
        sequence = find_sequence(session, slug)
        try:
            counts = enroll_and_audit(session, actor, sequence, emails=body.emails, start_at=start_at)
        except ValueError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return JSONResponse({"sequence": slug, **counts})
