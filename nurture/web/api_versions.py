"""Sequence versions in the JSON API: save a draft, the plan of a draft, publish (stay | move), archive.

Same conventions as :mod:`nurture.web.api`: bearer tokens, role checks, ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from nurture import versions
from nurture.db import transaction
from nurture.mail.templates import EmailTemplates
from nurture.models import StaffRole
from nurture.sequences.loader import SequenceValidationError, definition_from
from nurture.web.api import ApiError, _actor, _json, _sequence

router = APIRouter(prefix="/api/v1", tags=["staff"])
STATUS_OF = {"not_found": 404, "no_draft": 404, "conflict": 409, "unchanged": 409}


def _api_error(exc: versions.VersionError) -> ApiError:
    return ApiError(STATUS_OF.get(exc.code, 400), exc.code, exc.message)


def _choice(value: Any) -> versions.Migrate:
    try:
        return versions.Migrate(value if value is not None else "stay")
    except ValueError:
        raise ApiError(400, "invalid", 'migrate must be "stay" or "move"') from None


@router.put(
    "/sequences/{slug}/draft",
    summary="Save a draft version: the body is the sequence as JSON, shaped like its YAML file (name, "
    "timezone, window, steps, goals, ...); validated exactly as a file is. Subscribers see nothing until "
    "it is published",
)
async def save_draft(request: Request, slug: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.editor)
    raw = await _json(request)
    if raw.get("slug", slug) != slug:
        raise ApiError(400, "invalid", f"the body's slug must be {slug!r} (or left out)")
    settings = request.app.state.settings

    def work() -> dict[str, Any]:
        with transaction() as session:
            sequence = versions.lock(session, slug)
            try:
                definition = definition_from(
                    {**raw, "slug": slug}, Path(f"{slug}.json"), EmailTemplates(settings.templates_dir)
                )
            except SequenceValidationError as exc:
                raise ApiError(400, "invalid", exc.summary()) from None
            draft = versions.save_staff_draft(session, sequence, definition, actor)
            return {"sequence": slug, "draft": draft.number, "plan": f"/api/v1/sequences/{slug}/plan"}

    try:
        return JSONResponse(await run_in_threadpool(work))
    except versions.VersionError as exc:
        raise _api_error(exc) from None


@router.get(
    "/sequences/{slug}/plan",
    summary="What publishing the draft version does to enrollments in flight, by step key (stay | move)",
)
def get_plan(request: Request, slug: str) -> JSONResponse:
    _actor(request, StaffRole.viewer)
    rate = request.app.state.settings.resume_rate_per_minute
    with transaction() as session:
        sequence = _sequence(session, slug)
        try:
            draft, plan = versions.plan_for_draft(session, sequence, versions.Migrate.move, per_minute=rate)
        except versions.VersionError as exc:
            raise _api_error(exc) from None
        about = {"number": draft.number, "origin": draft.origin, "author": draft.author}
        return JSONResponse({**plan.as_dict(), "draft": about})


@router.post(
    "/sequences/{slug}/publish",
    summary='Publish the draft: {"migrate": "stay"} (default: in-flight enrollments keep their version) '
    'or {"migrate": "move"}; an archived sequence without a draft is restored',
)
async def publish_sequence(request: Request, slug: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.editor)
    fields = await _json(request)
    choice = _choice(fields.get("migrate"))
    rate = request.app.state.settings.resume_rate_per_minute

    def work() -> dict[str, Any]:
        try:
            with transaction() as session:
                plan, line = versions.publish(session, slug, choice, actor=actor, per_minute=rate)
                body: dict[str, Any] = {"sequence": slug, "message": line}
                if plan is not None:
                    body |= {"version": plan.new.number, "migrate": choice.value, "outcomes": plan.counts()}
                return body
        except versions.VersionError as exc:
            raise _api_error(exc) from None

    return JSONResponse(await run_in_threadpool(work))


@router.post(
    "/sequences/{slug}/archive",
    summary='Archive: no new enrollments; in-flight ones finish, or end now with {"stop": true}',
)
async def archive_sequence(request: Request, slug: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.editor)
    fields = await _json(request)
    stop = fields.get("stop", False)
    if not isinstance(stop, bool):
        raise ApiError(400, "invalid", "stop must be true or false")

    def work() -> dict[str, Any]:
        try:
            with transaction() as session:
                cancelled = versions.archive_action(session, slug, stop=stop, actor=actor)
                return {"sequence": slug, "status": "archived", "stop": stop, "cancelled": cancelled}
        except versions.VersionError as exc:
            raise _api_error(exc) from None

    return JSONResponse(await run_in_threadpool(work))
