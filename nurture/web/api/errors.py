"""Errors of the JSON API: one shape, ``{"error": {"code": ..., "message": ...}}``, for every answer that is
not a success, in the answers themselves and in the OpenAPI document.

A route raises :class:`ApiError`; FastAPI's own refusals under ``/api/`` (a body or query that fails its
model, a path no route has) are answered in the same shape. A body that fails its model is a 400, as it was
when bodies were parsed by hand, never FastAPI's 422 with its own format: clients and docs know 400.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from nurture.web.public.unavailable import RETRY_AFTER_SECONDS

API_PATHS = "/api/"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Stable, for programs: unauthorized, forbidden, not_found, conflict, invalid, "
        "bad_request, unavailable, or an action's own (no_draft, unchanged, not_held, ...)",
        examples=["not_found"],
    )
    message: str = Field(description="For people: what was wrong", examples=["no sequence 'nope'"])


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    error: ErrorDetail


_MEANING = {
    400: "The body or a query parameter is not valid (`invalid`), or the body cannot be read (`bad_request`)",
    401: "No token, or a token that is not valid (`unauthorized`)",
    403: "The token's user lacks the role this needs (`forbidden`)",
    404: "No such resource (`not_found`, or the action's own code)",
    409: "Not possible in the resource's current state (`conflict`, or the action's own code)",
    413: "The body is too large (`bad_request`)",
    415: "The body's content type or charset is not accepted (`bad_request`)",
    503: "The database is unreachable or busy; nothing was saved: try again after `Retry-After` seconds",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    503: {
        "Retry-After": {
            "description": f"Seconds to wait ({RETRY_AFTER_SECONDS})",
            "schema": {"type": "string"},
        }
    },
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries for the error statuses a route can answer, each with the error schema.
    503 is added to every route: any of them can meet an unreachable database
    (nurture.web.public.unavailable)."""
    entries: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 503}):
        entry: dict[str, Any] = {"model": ErrorBody, "description": _MEANING[status]}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        entries[status] = entry
    return entries


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def _on_api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return error_response(exc.status, exc.code, exc.message, headers)


def describe(error: Any) -> str:
    """One of pydantic's errors as a line for people: ``field.sub: what is wrong``."""
    where = ".".join(str(part) for part in error.get("loc", ())[1:])  # the first part is body / query / path
    message = str(error.get("msg", "is not valid"))
    return f"{where}: {message}" if where else message


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if not request.url.path.startswith(API_PATHS):
        return await request_validation_exception_handler(request, exc)
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    code = "bad_request" if first.get("type") == "json_invalid" else "invalid"
    return error_response(400, code, describe(first))


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 under /api/, shaped like every other API error."""
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith(API_PATHS):
        return await http_exception_handler(request, exc)
    code = _HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
