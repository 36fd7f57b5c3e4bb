"""The page that follows long staff work (:mod:`nurture.staff.jobs`): a progress bar that moves, then the
result.

``/admin/jobs/{id}`` renders the job; while it runs, a few lines of script on the page ask
``/admin/jobs/{id}/status`` (JSON) once a second and move the bar, announcing the change to screen readers
through a polite live region; without script, a "Refresh" link does the same. An export's file is
downloaded from ``/admin/jobs/{id}/download``. A job is visible to whoever started it, and to admins.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from nurture.core.db import transaction
from nurture.core.ids import row_id
from nurture.models import Job, JobStatus, StaffRole
from nurture.staff import jobs
from nurture.web.admin.common import NotFound, page
from nurture.web.admin.deps import Editor, Staff

router = APIRouter(prefix="/admin", include_in_schema=False)


def _job(session: Any, who: Staff, job_id: str) -> Job:
    target = row_id(job_id)
    job = session.get(Job, target) if target is not None else None
    if job is None or (job.user_id != who.actor.id and not who.actor.may(StaffRole.admin)):
        raise NotFound("There is no such job.")
    return job


def status_of(job: Job) -> dict[str, Any]:
    done, total = job.done, job.total
    running = jobs.live(job.id)
    if running is not None and job.status == JobStatus.running:
        done, total = running.done, running.total_count
    # A job this process runs is alive by definition; another process's is judged by its heartbeat.
    state = jobs.state(job) if running is None else job.status
    percent = jobs.percent(job, done, total)
    return {"id": job.id, "state": state, "done": done, "total": total, "percent": percent}


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, who: Editor) -> HTMLResponse:
    with transaction() as session:
        job = _job(session, who, job_id)
        return page(
            request,
            "job.html",
            csrf=who.csrf,
            actor=who.actor,
            job=job,
            status=status_of(job),
            result=job.result or {},
            has_file=job.output is not None,
        )


@router.get("/jobs/{job_id}/status")
def job_status(job_id: str, who: Editor) -> JSONResponse:
    with transaction() as session:
        answer = status_of(_job(session, who, job_id))
    return JSONResponse(answer, headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/download")
def job_download(job_id: str, who: Editor) -> Response:
    with transaction() as session:
        job = _job(session, who, job_id)
        if job.output is None:
            raise NotFound("This job has no file to download.")
        data, name = job.output, (job.result or {}).get("filename", f"job-{job.id}.csv")
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )
