"""A sequence's results: per step (what was sent, clicked, unsubscribed and converted, from
:func:`nurture.sequences.results.sequence_stats`) and per day over a chosen period
(:func:`nurture.sequences.figures_over_time.sequence_series`), as charts with their numbers beside them, and
the same daily figures as a CSV download."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from nurture.core.db import transaction
from nurture.mail.templates import EmailTemplates
from nurture.models import StaffRole
from nurture.sequences import figures_over_time, versions
from nurture.sequences.experiments import ExperimentError, winner_draft
from nurture.sequences.loader import SequenceValidationError
from nurture.sequences.results import sequence_stats
from nurture.web.admin import charts
from nurture.web.admin.common import page, q, sequence_or_404, settings_of
from nurture.web.admin.deps import EditorForm, Viewer

router = APIRouter(prefix="/admin", include_in_schema=False)
LABELS = {"sent": "sent", "clicked": "clicked", "unsubscribed": "unsubscribed", "goals": "goals met"}


def _days(value: str | None) -> int:
    """The period asked for, one of reports.WINDOW_DAYS; anything else is the default 30."""
    try:
        days = int(value or 30)
    except ValueError:
        return 30
    return days if days in figures_over_time.WINDOW_DAYS else 30


@router.get("/sequences/{slug}/results")
def results_page(request: Request, slug: str, who: Viewer, days: str | None = None) -> HTMLResponse:
    period = _days(days)
    tz = ZoneInfo(settings_of(request).web.report_timezone)
    with transaction() as session:
        sequence = sequence_or_404(session, slug)
        stats = sequence_stats(session, sequence)
        series = figures_over_time.sequence_series(session, sequence, tz, days=period)
    funnel_rows = [("enrolled", stats.enrolled)] + [(step.key, step.sent) for step in stats.steps]
    columns = [series.per_day(s) for s in figures_over_time.SERIES]
    daily = [(day, [column[i] for column in columns]) for i, day in enumerate(series.days)]
    return page(
        request,
        "results.html",
        csrf=who.csrf,
        actor=who.actor,
        sequence=sequence,
        stats=stats,
        series=series,
        labels=LABELS,
        period=period,
        periods=figures_over_time.WINDOW_DAYS,
        zone=tz.key,
        funnel_rows=funnel_rows,
        daily=daily,
        can_end_tests=who.actor.may(StaffRole.editor),
        funnel=charts.both(charts.funnel, funnel_rows),
        over_time=charts.both(
            charts.per_day, series.days, {LABELS[s]: series.per_day(s) for s in figures_over_time.SERIES}
        ),
        by_step=charts.both(
            charts.per_step, series.steps, {LABELS[s]: series.per_step(s) for s in figures_over_time.SERIES}
        ),
    )


@router.post("/sequences/{slug}/tests/{step}/winner")
async def end_test_form(request: Request, slug: str, step: str, posted: EditorForm) -> Response:
    """End an A/B test: a draft in which everyone gets the chosen variant, then the draft's plan to publish
    (nothing changes for subscribers before that; docs/experiments.md)."""
    templates = EmailTemplates(settings_of(request).templates_dir)
    variant = str(posted.fields.get("variant", ""))

    def work() -> str | None:
        try:
            with transaction() as session:
                winner_draft(session, sequence_or_404(session, slug), step, variant, posted.actor, templates)
        except (ExperimentError, SequenceValidationError, versions.VersionError) as exc:
            return str(getattr(exc, "message", exc))
        return None

    error = await run_in_threadpool(work)
    done = error or f"Draft saved: everyone gets {variant!r} on {step!r} once you publish it (choose move)."
    return RedirectResponse(f"/admin/sequences/{slug}/plan?done={q(done)}", status_code=303)


@router.get("/sequences/{slug}/results.csv")
def results_csv(request: Request, slug: str, who: Viewer, days: str | None = None) -> Response:
    period = _days(days)
    tz = ZoneInfo(settings_of(request).web.report_timezone)
    with transaction() as session:
        sequence = sequence_or_404(session, slug)
        data = figures_over_time.sequence_series(session, sequence, tz, days=period).csv()
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{slug}-results-{period}d.csv"',
            "Cache-Control": "no-store",
        },
    )
