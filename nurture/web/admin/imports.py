"""CSV in and out (editors): import a file of subscribers into a sequence, export every subscriber.

A file of more than ``NURTURE_BACKGROUND_ROWS`` rows is imported as a job (:mod:`nurture.staff.jobs`): the
answer is the job's page, whose bar moves as chunks commit. Smaller files answer with the report at once.
The export is a direct download (``/admin/subscribers.csv``), or, from the subscribers page, a job with
progress whose file is downloaded from the job page.
"""

from __future__ import annotations

import io
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from nurture.core.db import transaction
from nurture.models import Subscriber
from nurture.staff import accounts, jobs
from nurture.subscribers import staff_actions
from nurture.subscribers.exports import export_csv
from nurture.subscribers.import_files import ImportError_, ImportReport, read_csv
from nurture.subscribers.importer import import_and_audit
from nurture.web.admin.common import live_slugs, page, settings_of
from nurture.web.admin.deps import Editor, EditorForm, EditorUpload

router = APIRouter(prefix="/admin", include_in_schema=False)
MAX_ERRORS_KEPT = 1000  # rows refused that a job's page lists; the count is always complete


def report_dict(report: ImportReport) -> dict[str, Any]:
    return {**report.as_dict(most_errors=MAX_ERRORS_KEPT), "error_count": len(report.errors)}


def run_import(
    actor: accounts.Actor, rows: list[Any], report: ImportReport, slug: str, source: str, progress: Any = None
) -> ImportReport:
    """Import the parsed rows and audit it; ``progress(n)`` hears of each chunk committed."""
    return import_and_audit(actor, rows, report, slug, source, progress=progress)


@router.get("/import")
def import_page(request: Request, who: Editor) -> HTMLResponse:
    return page(
        request, "import.html", csrf=who.csrf, actor=who.actor, slugs=live_slugs(), report=None, form={}
    )


@router.post("/import")
async def import_upload(request: Request, upload: EditorUpload) -> Response:
    actor, fields, data = upload.actor, upload.fields, upload.data
    slug = fields.get("sequence", "")
    source = fields.get("consent_source", "")
    threshold = settings_of(request).web.background_rows

    def work() -> tuple[Any, str | None, int | None]:
        if data is None:
            return None, "Choose a CSV file to import.", None
        if not source.strip():
            return None, "Say where these people gave their consent (consent source).", None
        try:
            rows, errors = read_csv(data)
            if len(rows) > threshold:
                # The job re-checks the sequence when it starts; a bad slug fails the job, with the reason.
                job_id = jobs.start(
                    "import",
                    f"Import of {len(rows):,} rows into {slug}",
                    actor,
                    len(rows),
                    lambda progress: jobs.Outcome(
                        report_dict(
                            run_import(actor, rows, ImportReport(errors=errors), slug, source, progress.add)
                        )
                    ),
                )
                return None, None, job_id
            return run_import(actor, rows, ImportReport(errors=errors), slug, source), None, None
        except ImportError_ as exc:
            return None, f"Nothing was imported: {exc}", None

    report, error, job_id = await run_in_threadpool(work)
    if job_id is not None:
        return RedirectResponse(f"/admin/jobs/{job_id}", status_code=303)
    return page(
        request,
        "import.html",
        400 if error else 200,
        csrf=upload.csrf,
        actor=actor,
        slugs=await run_in_threadpool(live_slugs),
        report=report,
        error=error,
        form={"sequence": slug, "consent_source": source},
    )


@router.get("/subscribers.csv")
def export_all(request: Request, who: Editor) -> Response:
    with transaction() as session:
        data = staff_actions.export_all_csv(session, who.actor)
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="subscribers.csv"',
            "Cache-Control": "no-store",
        },
    )


@router.post("/exports")
async def export_job(form: EditorForm) -> Response:
    actor = form.actor

    def work(progress: jobs.Progress) -> jobs.Outcome:
        buffer = io.StringIO()
        with transaction() as session:
            count = export_csv(session, buffer, progress=progress.add)
            accounts.audit(session, actor, "subscribers.export", "subscribers", None, {"count": count})
        return jobs.Outcome(
            {"exported": count, "filename": "subscribers.csv"}, buffer.getvalue().encode("utf-8")
        )

    def begin() -> int:
        with transaction() as session:
            total = session.scalar(select(func.count()).select_from(Subscriber)) or 0
        return jobs.start("export", f"Export of {total:,} subscribers", actor, total, work)

    job_id = await run_in_threadpool(begin)
    return RedirectResponse(f"/admin/jobs/{job_id}", status_code=303)
