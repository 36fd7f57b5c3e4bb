"""Sequence versions: save a draft, the plan of a draft, publish it (stay | move), archive."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from nurture.core.db import transaction
from nurture.mail.templates import EmailTemplates
from nurture.sequences import version_plans, versions
from nurture.sequences.loader import SequenceValidationError, definition_from
from nurture.web.api.deps import AppSettings, DbSession, Editor, SequenceSlug, Viewer, find_sequence
from nurture.web.api.errors import ApiError, error_responses
from nurture.web.api.routing import ApiRoute
from nurture.web.api.schemas import JsonObject, RequestBody

router = APIRouter(prefix="/api/v1", tags=["versions"], route_class=ApiRoute)
STATUS_OF = {"not_found": 404, "no_draft": 404, "conflict": 409, "unchanged": 409}
WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415)

# --- models ---------------------------------------------------------------------------------------------


class DraftBody(RequestBody):
    """The sequence as JSON, shaped like its YAML file. The file loader validates it, exactly as a file:
    the fields below are what it knows; any other is reported by name."""

    # Other fields are kept for the loader, which names each one it does not know.
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "name": "The course",
                    "timezone": "America/New_York",
                    "window": {"days": "mon-fri", "start": "09:00", "end": "17:00"},
                    "steps": [
                        {"key": "hello", "delay": 0, "template": "demo/hello"},
                        {"key": "middle", "delay": "2d", "template": "demo/middle"},
                    ],
                }
            ]
        },
    )

    slug: str | None = Field(default=None, description="The path's slug, or left out")
    name: str | None = Field(default=None, examples=["Understanding ketamine therapy"])
    description: str | None = None
    timezone: str | None = Field(default=None, examples=["America/New_York"])
    window: JsonObject | None = Field(
        default=None, description='{"days": "mon-fri", "start": "09:00", "end": "11:30"}'
    )
    steps: list[JsonValue] | None = Field(
        default=None,
        description='[{"key": "welcome", "delay": 0, "template": "demo/hello", "subject": ..., '
        '"window": ...}]',
    )
    status: str | None = Field(default=None, description="active or draft")
    holidays: JsonValue = None
    goals: JsonValue = None
    exit_events: JsonValue = None
    reentry: JsonValue = None
    reentry_cooldown: JsonValue = None
    on_resignup: JsonValue = None
    tracking: JsonValue = None
    reviewed_by: JsonValue = None
    reviewed_on: JsonValue = None


class DraftSaved(BaseModel):
    sequence: str
    draft: int = Field(description="The draft version's number")
    plan: str = Field(description="Where its plan is", examples=["/api/v1/sequences/course/plan"])


class DraftAbout(BaseModel):
    number: int
    origin: str
    author: str | None


class Plan(BaseModel):
    sequence: str
    live_version: int | None
    new_version: int | None
    choice: str
    changes: JsonObject | None = Field(description="removed, added, changed and settings, by step key")
    in_flight: int
    outcomes: dict[str, int] = Field(description="stay, move, stop: how many enrollments each")
    by_key: list[JsonObject]
    sending_now_note: str
    draft: DraftAbout


class PublishBody(RequestBody):
    migrate: Annotated[version_plans.Migrate, Field(strict=False)] | None = Field(
        default=None, description="stay (default): in-flight enrollments keep their version; move"
    )


class Published(BaseModel):
    sequence: str
    message: str
    version: int | None = None
    migrate: str | None = None
    outcomes: dict[str, int] | None = None


class ArchiveBody(RequestBody):
    stop: bool = Field(default=False, description="true: end in-flight enrollments now")


OptionalPublishBody = Annotated[PublishBody, Body(default_factory=PublishBody)]
OptionalArchiveBody = Annotated[ArchiveBody, Body(default_factory=ArchiveBody)]


class Archived(BaseModel):
    sequence: str
    status: str
    stop: bool
    cancelled: int


def _api_error(exc: versions.VersionError) -> ApiError:
    return ApiError(STATUS_OF.get(exc.code, 400), exc.code, exc.message)


# --- routes -----------------------------------------------------------------------------------------------


@router.put(
    "/sequences/{slug}/draft",
    summary="Save a draft version: the body is the sequence as JSON, shaped like its YAML file (name, "
    "timezone, window, steps, goals, ...); validated exactly as a file is. Subscribers see nothing until "
    "it is published",
    response_model=DraftSaved,
    responses=WRITE_ERRORS,
)
def save_draft(actor: Editor, settings: AppSettings, slug: SequenceSlug, body: DraftBody) -> JSONResponse:
    raw = body.model_dump(exclude_unset=True)
    if raw.get("slug", slug) != slug:
        raise ApiError(400, "invalid", f"the body's slug must be {slug!r} (or left out)")
    try:
        with transaction() as session:
            sequence = versions.lock(session, slug)
            try:
                definition = definition_from(
                    {**raw, "slug": slug}, Path(f"{slug}.json"), EmailTemplates(settings.templates_dir)
                )
            except SequenceValidationError as exc:
                raise ApiError(400, "invalid", exc.summary()) from None
            draft = versions.save_staff_draft(session, sequence, definition, actor)
            return JSONResponse(
                {"sequence": slug, "draft": draft.number, "plan": f"/api/v1/sequences/{slug}/plan"}
            )
    except versions.VersionError as exc:
        raise _api_error(exc) from None


@router.get(
    "/sequences/{slug}/plan",
    summary="What publishing the draft version does to enrollments in flight, by step key (stay | move)",
    response_model=Plan,
    responses=error_responses(401, 404),
)
def get_plan(actor: Viewer, session: DbSession, settings: AppSettings, slug: SequenceSlug) -> JSONResponse:
    sequence = find_sequence(session, slug)
    try:
        draft, plan = versions.plan_for_draft(
            session, sequence, version_plans.Migrate.move, per_minute=settings.limits.resume_rate_per_minute
        )
    except versions.VersionError as exc:
        raise _api_error(exc) from None
    about = {"number": draft.number, "origin": draft.origin, "author": draft.author}
    return JSONResponse({**plan.as_dict(), "draft": about})


@router.post(
    "/sequences/{slug}/publish",
    summary='Publish the draft: {"migrate": "stay"} (default: in-flight enrollments keep their version) '
    'or {"migrate": "move"}; an archived sequence without a draft is restored',
    response_model=Published,
    responses=WRITE_ERRORS,
)
def publish_sequence(
    actor: Editor, settings: AppSettings, slug: SequenceSlug, body: OptionalPublishBody
) -> JSONResponse:
    choice = body.migrate or version_plans.Migrate.stay
    try:
        with transaction() as session:
            plan, line = versions.publish(
                session, slug, choice, actor=actor, per_minute=settings.limits.resume_rate_per_minute
            )
            answer: dict[str, Any] = {"sequence": slug, "message": line}
            if plan is not None:
                answer |= {"version": plan.new.number, "migrate": choice.value, "outcomes": plan.counts()}
            return JSONResponse(answer)
    except versions.VersionError as exc:
        raise _api_error(exc) from None


@router.post(
    "/sequences/{slug}/archive",
    summary='Archive: no new enrollments; in-flight ones finish, or end now with {"stop": true}',
    response_model=Archived,
    responses=WRITE_ERRORS,
)
def archive_sequence(actor: Editor, slug: SequenceSlug, body: OptionalArchiveBody) -> JSONResponse:
    try:
        with transaction() as session:
            cancelled = versions.archive_action(session, slug, stop=body.stop, actor=actor)
            return JSONResponse(
                {"sequence": slug, "status": "archived", "stop": body.stop, "cancelled": cancelled}
            )
    except versions.VersionError as exc:
        raise _api_error(exc) from None
