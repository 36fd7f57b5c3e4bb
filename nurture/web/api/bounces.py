"""``POST /api/v1/bounces``: a bounce notification handed over by a mail server or a relay's webhook.

The body is the raw RFC 5322 message (``Content-Type: message/rfc822``); the caller authenticates with
``Authorization: Bearer <NURTURE_BOUNCE_TOKEN>``. Without that setting the endpoint does not exist (404).
Answers: 202 with counts; 400 for a body that is no email message, 401, 413, 415, each with a JSON error
shaped as in the staff API; never a 500 for bad input.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from nurture.core.ids import parse_id
from nurture.subscribers import bounces

router = APIRouter()

MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # a DSN quoting a whole newsletter with images stays well below
MEDIA_TYPE = "message/rfc822"


def _error(status_code: int, code: str, message: str, **headers: str) -> JSONResponse:
    """Shaped as the staff API's errors (nurture/web/api.py): {"error": {"code": ..., "message": ...}}."""
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status_code, headers=headers or None)


@router.post("/api/v1/bounces", include_in_schema=False)
async def receive_bounce(request: Request) -> JSONResponse:
    token: str = request.app.state.settings.web.bounce_token
    if not token:
        return JSONResponse({"detail": "Not Found"}, status_code=404)  # as for any unknown path
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return _error(
            401,
            "unauthorized",
            "send Authorization: Bearer <NURTURE_BOUNCE_TOKEN>",
            **{"WWW-Authenticate": "Bearer"},
        )
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != MEDIA_TYPE:
        return _error(415, "unsupported_media_type", f"send the raw message as {MEDIA_TYPE}")
    declared = parse_id(request.headers.get("content-length", ""))
    if declared is not None and declared > MAX_MESSAGE_BYTES:
        return _error(413, "too_large", f"the message must be at most {MAX_MESSAGE_BYTES} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_MESSAGE_BYTES:
            return _error(413, "too_large", f"the message must be at most {MAX_MESSAGE_BYTES} bytes")
    try:
        tally = await run_in_threadpool(bounces.process, bytes(data))
    except bounces.MalformedMessage as exc:
        return _error(400, "malformed_message", str(exc))
    return JSONResponse(tally.as_dict(), status_code=202)
