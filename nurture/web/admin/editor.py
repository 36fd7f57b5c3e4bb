"""Editing a sequence in the staff UI: the edit form, the plan of the draft, publish, discard, archive.

Saving the form never changes what subscribers receive: it writes a *draft* version (validated by the same
code as a YAML file, :func:`nurture.sequences.loader.definition_from`). The plan page shows, by step key, how
many enrollments wait there and what "stay" and "move" would do
(:func:`nurture.sequences.version_plans.compute_plan`, the function publishing applies); staff then publish
with one of them. Every POST: CSRF, then role, then input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from nurture.core.db import transaction
from nurture.core.ids import parse_id
from nurture.mail.templates import PARTS, EmailTemplates
from nurture.models import SequenceVersion, StaffRole
from nurture.sequences import version_plans, versions
from nurture.sequences.loader import SequenceValidationError, definition_from
from nurture.sequences.schedule import format_delay
from nurture.staff import accounts
from nurture.web.admin.common import page, q, sequence_or_404, settings_of
from nurture.web.admin.deps import Editor, EditorForm, Staff, StaffForm, Viewer

router = APIRouter(prefix="/admin", include_in_schema=False)
NEW_ROWS = 2  # blank "add a step" rows on the form
MAX_STEPS = 50
CARRIED_STEP_FIELDS = ("variants", "winner", "only_if")


class FormError(ValueError):
    pass


def available_templates(templates_dir: Path) -> list[str]:
    """Template folders a step can use: every folder under templates/email/ with all three parts."""
    root = Path(templates_dir) / "email"
    found = []
    for subject in root.rglob("subject.txt"):
        folder = subject.parent.relative_to(root).as_posix()
        if folder.startswith("_") or folder.startswith("transactional"):
            continue
        if all((subject.parent / part).is_file() for part in PARTS):
            found.append(folder)
    return sorted(found)


def _rows_of(version: SequenceVersion) -> list[dict[str, Any]]:
    return [
        {
            "key": s.key,
            "order": s.position,
            "delay": format_delay(_seconds(s.delay_seconds)),
            "template": s.template,
            "subject": s.subject or "",
            "any_hour": not s.use_window,
            "remove": False,
        }
        for s in version.steps
    ]


def _seconds(value: int) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)


def _base_version(session: Any, slug: str, *, lock: bool = False) -> tuple[Any, SequenceVersion]:
    """The version the form starts from: the waiting draft, else the live version. ``lock`` holds the
    sequence row, so two editors saving at once write one draft after the other, never the same number."""
    sequence = sequence_or_404(session, slug)
    if lock:
        sequence = versions.lock(session, slug)
    version = versions.pending_draft(session, sequence) or sequence.current_version
    if version is None:
        raise FormError("This sequence has no version to edit.")
    return sequence, version


def _form_values(version: SequenceVersion) -> dict[str, Any]:
    data = versions.as_file_data(version)
    window = data.get("window") or {}
    return {
        "name": data.get("name", ""),
        "timezone": data.get("timezone") or "",
        "window_days": window.get("days", ""),
        "window_start": window.get("start", ""),
        "window_end": window.get("end", ""),
        "steps": _rows_of(version),
    }


def _text(fields: dict[str, Any], name: str, limit: int = 300) -> str:
    value = fields.get(name, "")
    if not isinstance(value, str):
        raise FormError(f"{name} must be text")
    if len(value) > limit:
        raise FormError(f"{name} is longer than {limit} characters")
    return value.strip()


def _read_form(fields: dict[str, Any]) -> dict[str, Any]:
    """The submitted form as the editor shows it again (on error) and as the raw steps to validate."""
    count = parse_id(_text(fields, "step_count", 4) or "0")
    if count is None or count > MAX_STEPS:
        raise FormError("the form is damaged: reload the page")
    rows: list[dict[str, Any]] = []
    for prefix in [f"steps-{i}" for i in range(count)] + [f"new-{j}" for j in range(NEW_ROWS)]:
        row = {
            "key": _text(fields, f"{prefix}-key", 64),
            "order": _text(fields, f"{prefix}-order", 6),
            "delay": _text(fields, f"{prefix}-delay", 20),
            "template": _text(fields, f"{prefix}-template", 200),
            "subject": _text(fields, f"{prefix}-subject", 300),
            "any_hour": fields.get(f"{prefix}-any_hour") == "on",
            "remove": fields.get(f"{prefix}-remove") == "on",
            "new": prefix.startswith("new"),
        }
        if row["new"] and not (row["key"] or row["template"]):
            continue  # an unused "add a step" row
        rows.append(row)
    return {
        "name": _text(fields, "name", 200),
        "timezone": _text(fields, "timezone", 64),
        "window_days": _text(fields, "window_days", 64),
        "window_start": _text(fields, "window_start", 5),
        "window_end": _text(fields, "window_end", 5),
        "steps": rows,
    }


def _raw_definition(base: SequenceVersion, form: dict[str, Any], choices: list[str]) -> dict[str, Any]:
    """The edited definition as file-shaped data, keeping what the form does not show (goals, ...)."""
    raw = versions.as_file_data(base)
    raw["name"] = form["name"]
    raw["timezone"] = form["timezone"] or None
    if form["window_days"] or form["window_start"] or form["window_end"]:
        raw["window"] = {
            "days": form["window_days"],
            "start": form["window_start"],
            "end": form["window_end"],
        }
    else:
        raw["window"] = None
    # What the form has no fields for stays with its step (an A/B test, a condition).
    carried = {
        step["key"]: {k: step[k] for k in CARRIED_STEP_FIELDS if k in step} for step in raw.get("steps", [])
    }
    kept = []
    for index, row in enumerate(form["steps"]):
        if row["remove"]:
            continue
        if row["template"] and row["template"] not in choices:
            label = row["key"] or f"#{index + 1}"
            raise FormError(f"step {label}: unknown template {row['template']!r}: choose one from the list")
        try:
            order = int(row["order"]) if row["order"] else 10_000 + index
        except ValueError:
            raise FormError(f"step {row['key'] or index + 1}: order must be a whole number") from None
        step: dict[str, Any] = {"key": row["key"], "delay": row["delay"], "template": row["template"]}
        if row["subject"]:
            step["subject"] = row["subject"]
        if row["any_hour"]:
            step["window"] = (
                False  # sent at its due time, outside the send window (nurture.sequences.timetable)
            )
        step |= carried.get(row["key"], {})
        kept.append((order, index, step))
    raw["steps"] = [step for _, _, step in sorted(kept, key=lambda item: (item[0], item[1]))]
    if raw["window"] is None:
        raw.pop("window")
    return raw


def _edit_page(
    request: Request,
    who: Staff,
    slug: str,
    *,
    form: dict[str, Any] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    settings = settings_of(request)
    with transaction() as session:
        sequence, base = _base_version(session, slug)
        values = form or _form_values(base)
        existing = [r for r in values["steps"] if not r.get("new")]
        return page(
            request,
            "sequence_edit.html",
            status_code,
            csrf=who.csrf,
            actor=who.actor,
            sequence=sequence,
            base=base,
            is_draft=base.published_at is None,
            form=values,
            existing=existing,
            new_rows=range(NEW_ROWS),
            templates=available_templates(settings.templates_dir),
            form_error=error,  # shown above the form (the base template would show `error` at the top)
        )


@router.get("/sequences/{slug}/edit")
def edit_page(request: Request, slug: str, who: Editor) -> HTMLResponse:
    try:
        return _edit_page(request, who, slug)
    except FormError as exc:
        return _plan_page(request, who, slug, error=str(exc), status_code=409)


@router.post("/sequences/{slug}/edit")
async def save_edit(request: Request, slug: str, posted: EditorForm) -> Response:
    actor, fields = posted.actor, posted.fields
    settings = settings_of(request)

    def work() -> tuple[str | None, dict[str, Any] | None]:
        form: dict[str, Any] | None = None
        try:
            form = _read_form(fields)
            with transaction() as session:
                sequence, base = _base_version(session, slug, lock=True)
                raw = _raw_definition(base, form, available_templates(settings.templates_dir))
                templates = EmailTemplates(settings.templates_dir)
                definition = definition_from(raw, Path(f"{slug}.yaml"), templates)
                versions.save_staff_draft(session, sequence, definition, actor)
                return None, None
        except FormError as exc:
            return str(exc), form
        except SequenceValidationError as exc:
            return exc.summary(), form
        except versions.VersionError as exc:
            return exc.message, form

    error, form = await run_in_threadpool(work)
    if error is not None:
        return await run_in_threadpool(
            lambda: _edit_page(request, posted, slug, form=form, error=error, status_code=400)
        )
    done = "Draft saved. Nothing changes for subscribers until you publish it."
    return RedirectResponse(f"/admin/sequences/{slug}/plan?done={q(done)}", status_code=303)


def _plan_page(
    request: Request,
    who: Staff,
    slug: str,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    rate = settings_of(request).limits.resume_rate_per_minute
    with transaction() as session:
        sequence = sequence_or_404(session, slug)
        draft = versions.pending_draft(session, sequence)
        plan = None
        if draft is not None:
            plan = version_plans.compute_plan(
                session,
                sequence,
                version_plans.shape_of_version(draft),
                version_plans.Migrate.move,
                per_minute=rate,
            )
        return page(
            request,
            "plan.html",
            status_code,
            csrf=who.csrf,
            actor=who.actor,
            sequence=sequence,
            live=sequence.current_version,
            draft=draft,
            plan=plan,
            rows=plan.by_key() if plan else [],
            counts=plan.counts() if plan else {},
            history=list(reversed(sequence.versions)),
            can_edit=who.actor.may(StaffRole.editor),
            error=error,
            notice=request.query_params.get("done"),
        )


@router.get("/sequences/{slug}/plan")
def plan_page(request: Request, slug: str, who: Viewer) -> HTMLResponse:
    return _plan_page(request, who, slug)


async def _action(request: Request, slug: str, action: str, posted: StaffForm) -> Response:
    actor, fields = posted.actor, posted.fields
    rate = settings_of(request).limits.resume_rate_per_minute

    def work() -> tuple[str | None, str | None, int]:
        try:
            with transaction() as session:
                if action == "publish":
                    try:
                        choice = version_plans.Migrate(fields.get("migrate", ""))
                    except ValueError:
                        return None, "Choose what happens to the enrollments in flight: stay or move.", 400
                    _plan, line = versions.publish(session, slug, choice, actor=actor, per_minute=rate)
                    return line, None, 200
                if action == "archive":
                    stop = fields.get("stop") == "on"
                    cancelled = versions.archive_action(session, slug, stop=stop, actor=actor)
                    if stop:
                        return f"Archived: {cancelled} emails cancelled.", None, 200
                    return "Archived: in-flight enrollments finish.", None, 200
                sequence = versions.lock(session, slug)
                draft = versions.pending_draft(session, sequence)
                if draft is None:
                    return None, "There is no draft to discard.", 409
                before = {"draft": draft.number}
                accounts.audit(session, actor, "sequence.discard_draft", f"sequence:{slug}", before, None)
                versions.discard_draft(session, draft)
                return f"Draft version {draft.number} discarded.", None, 200
        except versions.VersionError as exc:
            return None, exc.message, {"not_found": 404, "no_draft": 409, "conflict": 409}.get(exc.code, 400)

    message, error, status = await run_in_threadpool(work)
    if error is not None:
        return await run_in_threadpool(
            lambda: _plan_page(request, posted, slug, error=error, status_code=status)
        )
    return RedirectResponse(f"/admin/sequences/{slug}/plan?done={q(message or '')}", status_code=303)


@router.post("/sequences/{slug}/publish")
async def publish_form(request: Request, slug: str, posted: EditorForm) -> Response:
    return await _action(request, slug, "publish", posted)


@router.post("/sequences/{slug}/archive")
async def archive_form(request: Request, slug: str, posted: EditorForm) -> Response:
    return await _action(request, slug, "archive", posted)


@router.post("/sequences/{slug}/discard")
async def discard_form(request: Request, slug: str, posted: EditorForm) -> Response:
    return await _action(request, slug, "discard", posted)
