"""Subscribers in and out as CSV: import a file into a sequence (per-row errors in the answer) and export
every subscriber. Both are audited; the CSV format is docs/staff.md's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from nurture.core.db import transaction
from nurture.staff.accounts import Actor
from nurture.subscribers import staff_actions
from nurture.web.api.deps import Editor
from nurture.web.api.errors import ApiError, error_responses
from nurture.web.api.routing import ApiRoute

router = APIRouter(prefix="/api/v1", tags=["subscribers"], route_class=ApiRoute)
MAX_IMPORT_BYTES = 64 * 1024 * 1024  # 100,000 rows with a few attributes are about 10 MB
CSV_TYPES = ("text/csv", "application/csv")
CSV_BODY = {
    "schema": {
        "type": "string",
        "description": "UTF-8 CSV with a header row: email, first_name, timezone, ...",
    },
    "example": "email,first_name,timezone\nana@example.com,Ana,Europe/Lisbon\n",
}


class RowProblem(BaseModel):
    line: int
    email: str
    message: str


class ImportReport(BaseModel):
    imported: int
    enrolled_existing: int
    already_enrolled: int
    skipped: dict[str, int]
    errors: list[RowProblem]


def run_import(actor: Actor, data: bytes, slug: str, consent_source: str) -> Any:
    """Parse, import, audit (the staff UI's upload too); raises ImportError_ for a file that cannot be
    imported at all."""
    from nurture.subscribers.import_files import ImportReport as Report
    from nurture.subscribers.import_files import read_csv
    from nurture.subscribers.importer import import_and_audit

    rows, errors = read_csv(data)
    report = import_and_audit(actor, rows, Report(errors=errors), slug, consent_source)
    return report


@router.post(
    "/subscribers/import",
    summary="Import a CSV body (text/csv) with ?sequence=SLUG&consent_source=TEXT; per-row errors returned",
    response_model=ImportReport,
    responses=error_responses(400, 401, 403, 413, 415),
    # The body is a file, streamed with a size cap rather than parsed into a model.
    openapi_extra={"requestBody": {"required": True, "content": {kind: CSV_BODY for kind in CSV_TYPES}}},
)
async def import_subscribers(
    request: Request,
    actor: Editor,
    sequence: Annotated[str, Query(description="The sequence's slug", examples=["course"])] = "",
    consent_source: Annotated[
        str, Query(description="Where these people consented", examples=["webinar signup 2026-02"])
    ] = "",
) -> JSONResponse:
    from nurture.subscribers.import_files import ImportError_

    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind not in CSV_TYPES:
        raise ApiError(415, "bad_request", "send the CSV file as the body with Content-Type: text/csv")
    if not sequence:
        raise ApiError(400, "invalid", "give ?sequence=SLUG")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_IMPORT_BYTES:
            raise ApiError(413, "bad_request", f"the file must be at most {MAX_IMPORT_BYTES // 2**20} MB")

    def work() -> dict[str, Any]:
        try:
            report = run_import(actor, bytes(data), sequence, consent_source)
        except ImportError_ as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        return report.as_dict()

    return JSONResponse(await run_in_threadpool(work))


@router.get(
    "/subscribers.csv",
    summary="Every subscriber as CSV (attributes as one JSON column)",
    response_class=Response,
    responses={
        200: {"description": "The CSV file", "content": {"text/csv": {"schema": {"type": "string"}}}},
        **error_responses(401, 403),
    },
)
def export_subscribers(actor: Editor) -> Response:
    with transaction() as session:
        data = staff_actions.export_all_csv(session, actor)
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'},
    )
