"""When the database cannot be reached, or every pooled connection is busy, a request cannot be served now
but nothing about it is wrong: answer 503 with ``Retry-After`` (JSON for the API and JSON clients, a short
page otherwise) instead of a 500. Nothing was written: the transaction never began or was rolled back."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from nurture.core.logs import redact_tokens
from nurture.web.public.forms import wants_json

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
MESSAGE = "The service is busy or briefly unavailable; nothing was saved. Please try again in a moment."
PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Please try again</title></head>'
    f"<body><h1>Please try again in a moment</h1><p>{MESSAGE}</p></body></html>"
)


async def _service_unavailable(request: Request, exc: Exception) -> Response:
    path = redact_tokens(request.url.path)  # here too, for logging set up by something other than nurture
    log.warning("database unavailable for %s %s: %s", request.method, path, type(exc).__name__)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"}
    if request.url.path.startswith("/api/") or wants_json(request):
        body = {"error": {"code": "unavailable", "message": MESSAGE}}
        return JSONResponse(body, status_code=503, headers=headers)
    return HTMLResponse(PAGE, status_code=503, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(OperationalError, _service_unavailable)
    app.add_exception_handler(PoolTimeout, _service_unavailable)
